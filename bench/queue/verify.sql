-- After a run (psql variable started: the server clock when the workers started): jobs done,
-- completions counted, duplicates, completions refused by a fence, jobs granted while already
-- done, and seconds from the start to the last completion (the queue may empty before the end).
SELECT count(*) FILTER (WHERE state = 'done') AS done,
       coalesce(sum(completions), 0) AS completions,
       count(*) FILTER (WHERE completions > 1) AS duplicates,
       (SELECT coalesce(sum(jobs), 0) FROM queue_misses WHERE kind = 'refused') AS refused,
       (SELECT coalesce(sum(jobs), 0) FROM queue_misses WHERE kind = 'stale') AS stale,
       coalesce(extract(epoch FROM max(completed_at) - :'started'::timestamptz), 0) AS seconds
FROM queue_jobs;
