-- The statements on the lease table never fall back to a sequential scan, even when their
-- plans are made right after the table was analyzed while empty (a generic plan made from
-- those statistics would scan the whole table on every call, however large it grows).
SELECT count(*) AS live_rows FROM lease.leases;
ANALYZE lease.leases;
SELECT reltuples FROM pg_class WHERE oid = 'lease.leases'::regclass;
SELECT pg_stat_force_next_flush();
SELECT seq_scan AS seq_scans_before FROM pg_stat_user_tables WHERE relid = 'lease.leases'::regclass \gset
-- more than five executions of each statement, so that the plan cache switches to generic plans
DO $$
DECLARE
    token bigint;
BEGIN
    FOR i IN 1..12 LOOP
        token := lease_acquire('plan:' || i, 'h', '1 min');
        PERFORM lease_acquire('plan:' || i, 'h', '1 min');
        PERFORM lease_acquire('plan:' || i, 'other', '1 min');
        PERFORM lease_check('plan:' || i, token);
        PERFORM lease_renew('plan:' || i, token);
        PERFORM lease_release('plan:' || i, token);
    END LOOP;
END $$;
SELECT pg_stat_force_next_flush();
SELECT seq_scan - :seq_scans_before AS seq_scans_by_the_api FROM pg_stat_user_tables
WHERE relid = 'lease.leases'::regclass;
