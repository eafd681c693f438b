-- After a run (psql variables started and lsn: the server clock and WAL position when the
-- workers started): jobs done, completions counted, duplicates, completions refused by a fence,
-- jobs granted while already done, seconds from the start to the last completion (the queue may
-- empty before the end), and WAL bytes written since the start.
SELECT count(*) FILTER (WHERE state = 'done') AS done,
       coalesce(sum(completions), 0) AS completions,
       count(*) FILTER (WHERE completions > 1) AS duplicates,
       (SELECT coalesce(sum(jobs), 0) FROM queue_misses WHERE kind = 'refused') AS refused,
       (SELECT coalesce(sum(jobs), 0) FROM queue_misses WHERE kind = 'stale') AS stale,
       coalesce(extract(epoch FROM max(completed_at) - :'started'::timestamptz), 0) AS seconds,
       pg_wal_lsn_diff(pg_current_wal_lsn(), :'lsn') AS wal_bytes
FROM queue_jobs;
