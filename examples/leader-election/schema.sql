-- One row per term of leadership, written only under the fence of the leader's lease, so two
-- terms can never overlap in this table. Run once: psql -f examples/leader-election/schema.sql
CREATE TABLE IF NOT EXISTS leader_terms (
    resource     text NOT NULL,
    token        bigint NOT NULL,
    candidate    text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_seen_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (resource, token)
);
