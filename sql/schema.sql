-- The lease store: one row per lease, and the sequence its fencing tokens come from.
-- Only the extension's functions write here; ordinary roles have no rights on these objects.

CREATE SCHEMA lease;
COMMENT ON SCHEMA lease IS 'State of the lease extension: the lease table and the token sequence.';
REVOKE ALL ON SCHEMA lease FROM PUBLIC;
GRANT USAGE ON SCHEMA lease TO PUBLIC;

CREATE TABLE lease.leases (
    resource    text COLLATE "C" PRIMARY KEY,
    holder      text NOT NULL,
    token       bigint NOT NULL,
    owner       regrole NOT NULL,
    acquired_at timestamptz NOT NULL,
    renewed_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    session_pid integer,
    application_name text
);
CREATE INDEX leases_expires_at_idx ON lease.leases (expires_at);
CREATE INDEX leases_session_bound_idx ON lease.leases (token) WHERE session_pid IS NOT NULL;
REVOKE ALL ON lease.leases FROM PUBLIC;
COMMENT ON TABLE lease.leases IS 'One row per lease. A lease is held while clock_timestamp() < expires_at; expired rows are free and are replaced by the next acquire.';
COMMENT ON COLUMN lease.leases.resource IS 'Name of the leased resource.';
COMMENT ON COLUMN lease.leases.holder IS 'Name the holder gave itself when it acquired the lease.';
COMMENT ON COLUMN lease.leases.token IS 'Fencing token of this grant: larger than every token granted before it.';
COMMENT ON COLUMN lease.leases.owner IS 'Role that acquired the lease; only its members may renew or release it.';
COMMENT ON COLUMN lease.leases.acquired_at IS 'Server time of the grant.';
COMMENT ON COLUMN lease.leases.renewed_at IS 'Server time of the last renewal (the grant time if never renewed).';
COMMENT ON COLUMN lease.leases.expires_at IS 'Server time at which the lease ends unless renewed.';
COMMENT ON COLUMN lease.leases.session_pid IS 'For a session-bound lease: pid of the holder''s backend (NULL otherwise). The lease also ends when that session ends.';
COMMENT ON COLUMN lease.leases.application_name IS 'For a session-bound lease: application_name of the holder''s session.';

-- Tokens are (timeline - 1) << 48 | nextval: the sequence stays below 2^48.
CREATE SEQUENCE lease.token_seq AS bigint MINVALUE 1 MAXVALUE 281474976710655 NO CYCLE;
REVOKE ALL ON SEQUENCE lease.token_seq FROM PUBLIC;
COMMENT ON SEQUENCE lease.token_seq IS 'Source of fencing tokens. Never reset it: tokens must keep increasing.';
