#!/usr/bin/env bash
# Queue benchmark: WORKERS workers (8) each claim BATCH jobs (10) at a time from a queue of JOBS
# jobs (100,000), complete each job with a fenced update and give the claim back. Two queues on
# the same jobs table, run alternately in one run with pgbench (prepared statements):
#   lease:      lease_acquire_any over candidate jobs, a fetch of the granted jobs that are still
#               ready, then per job an update fenced by lease_check that also calls lease_release;
#   skiplocked: SELECT ... FOR UPDATE SKIP LOCKED claiming with locked_by/locked_until, then per
#               job an update fenced by locked_by/locked_until that also clears them.
# Every run starts from a fresh queue; jobs/s counts the jobs done from the start to the last
# completion, and every run checks that no job was completed twice. A last pair of runs gives
# claims a shorter life than the work (takeovers happen) to show each fence refusing completions.
# Usage: bench/queue/run.sh PORT [seconds per run, default 10], against a running server with the
# extension preloaded (bench/run.sh starts one). Writes bench/results/queue.md and queue.raw.
# Settings: LEASE_BENCH_ROUNDS (3), LEASE_BENCH_SYNC ("on off"), LEASE_QUEUE_JOBS, _WORKERS, _BATCH.
source "$(dirname "$0")/../../scripts/common.sh"

PORT=$1
DURATION=${2:-10}
ROUNDS=${LEASE_BENCH_ROUNDS:-3}
read -r -a SYNC_MODES <<< "${LEASE_BENCH_SYNC:-on off}"
JOBS=${LEASE_QUEUE_JOBS:-100000}
WORKERS=${LEASE_QUEUE_WORKERS:-8}
BATCH=${LEASE_QUEUE_BATCH:-10}
CANDIDATES=$(( 3 * BATCH ))      # the lease queue's candidate list per claim
TTL=30s                          # claims outlive the work: nothing expires in the timed runs
PRESSURE_TTL=20ms                # ... and here they do: BATCH jobs of PRESSURE_WORK_US each
PRESSURE_WORK_US=3000
QUEUES=(lease skiplocked)
HERE=$ROOT/bench/queue
OUT=$ROOT/bench/results/queue.md
RAW=$ROOT/bench/results/queue.raw
psql_bench=("$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1)
SCRIPTS=$(mktemp -d)
trap 'rm -rf "$SCRIPTS"' EXIT

# The pgbench script of one worker's batch: claim, then BATCH completions, each after WORK_US
# microseconds of "work" (none in the timed runs).
build_script() {
    local queue=$1 work_us=$2 i
    local file=$SCRIPTS/$queue-$work_us.sql
    {
        cat "$HERE/${queue}_claim.sql"
        if [ "$queue" = lease ]; then cat "$HERE/lease_fetch.sql"; fi
        for i in $(seq 1 "$BATCH"); do
            echo "\\set i $i"
            if [ "$work_us" -gt 0 ]; then echo "\\sleep $work_us us"; fi
            cat "$HERE/${queue}_complete.sql" "$HERE/refused.sql"
        done
    } > "$file"
    echo "$file"
}

# One run on a fresh queue. Prints: jobs/s, jobs done, completions, duplicates, refused, stale, failed.
run_queue() {
    local queue=$1 sync=$2 ttl=$3 work_us=$4 key=$5
    local script started log failed threads=$(( WORKERS < 2 ? 1 : 2 ))
    script=$(build_script "$queue" "$work_us")
    "${psql_bench[@]}" -v jobs="$JOBS" -f "$HERE/fill.sql"
    started=$("${psql_bench[@]}" -At -c "SELECT clock_timestamp()")
    log=$(PGOPTIONS="-c synchronous_commit=$sync" "$PG_BIN/pgbench" -n -M prepared -T "$DURATION" \
        -c "$WORKERS" -j "$threads" -h 127.0.0.1 -p "$PORT" -U postgres \
        -D ttl="$ttl" -D batch="$BATCH" -D candidates="$CANDIDATES" -f "$script" postgres 2>&1) \
        || { echo "$log" >&2; exit 1; }
    { echo "== $key"; echo "$log"; } >> "$RAW"
    failed=$(echo "$log" | awk '/number of failed transactions/ {print $5}')
    "${psql_bench[@]}" -At -F ' ' -v started="$started" -f "$HERE/verify.sql" \
        | awk -v failed="$failed" '{printf "%.0f %d %d %d %d %d %d\n", ($6 > 0 ? $1 / $6 : 0), $1, $2, $3, $4, $5, failed}'
}

median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

"${psql_bench[@]}" -f "$HERE/setup.sql" 2>/dev/null
: > "$RAW"
declare -A rate done_jobs completions duplicates refused stale failed
add() { local -n counter=$1; counter[$2]=$(( ${counter[$2]:-0} + $3 )); }

# Timed runs: each queue ROUNDS times per synchronous_commit mode, in alternating order; the
# median jobs/s is reported, the checks are summed over all runs.
for sync in "${SYNC_MODES[@]}"; do
    declare -A samples=()
    for round in $(seq 1 "$ROUNDS"); do
        for i in "${!QUEUES[@]}"; do
            queue=${QUEUES[$(( (i + round) % ${#QUEUES[@]} ))]}
            key=$sync/$queue
            read -r r d c dup ref st f <<< "$(run_queue "$queue" "$sync" "$TTL" 0 "$key")"
            samples[$queue]+=" $r"
            add done_jobs "$key" "$d"; add completions "$key" "$c"; add duplicates "$key" "$dup"
            add refused "$key" "$ref"; add stale "$key" "$st"; add failed "$key" "$f"
        done
    done
    for queue in "${QUEUES[@]}"; do
        key=$sync/$queue
        # shellcheck disable=SC2086
        rate[$key]=$(median ${samples[$queue]})
        printf '%-10s synchronous_commit=%-3s median %6s jobs/s (runs:%s)  duplicates=%s\n' \
            "$queue" "$sync" "${rate[$key]}" "${samples[$queue]}" "${duplicates[$key]}"
    done
    unset samples
done

# Takeover runs: claims end while their jobs are being worked on.
for queue in "${QUEUES[@]}"; do
    key=pressure/$queue
    read -r r d c dup ref st f <<< "$(run_queue "$queue" on "$PRESSURE_TTL" "$PRESSURE_WORK_US" "$key")"
    rate[$key]=$r done_jobs[$key]=$d completions[$key]=$c duplicates[$key]=$dup
    refused[$key]=$ref stale[$key]=$st failed[$key]=$f
done

{
    echo "| synchronous_commit | lease queue (jobs/s) | SKIP LOCKED queue (jobs/s) | lease / SKIP LOCKED | jobs done (lease / SKIP LOCKED) | jobs completed twice | completions − jobs done | failed |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    for sync in "${SYNC_MODES[@]}"; do
        l=$sync/lease s=$sync/skiplocked
        ratio=$(awk -v l="${rate[$l]}" -v s="${rate[$s]}" 'BEGIN {printf "%.2f", (s > 0 ? l / s : 0)}')
        dup=$(( ${duplicates[$l]} + ${duplicates[$s]} ))
        extra=$(( ${completions[$l]} - ${done_jobs[$l]} + ${completions[$s]} - ${done_jobs[$s]} ))
        echo "| $sync | ${rate[$l]} | ${rate[$s]} | $ratio | ${done_jobs[$l]} / ${done_jobs[$s]} | $dup | $extra | $(( ${failed[$l]} + ${failed[$s]} )) |"
    done
    echo
    echo "$WORKERS workers claiming $BATCH jobs at a time from a queue of $JOBS jobs, one transaction per"
    echo "claim and one per completion; median of $ROUNDS alternating runs of $DURATION s each, every run on a"
    echo "fresh queue (jobs/s: jobs done from the start to the last completion); duplicates and counts"
    echo "summed over all runs. The lease queue offers each claim the oldest $CANDIDATES ready jobs nobody"
    echo "holds, shuffled. pgbench -M prepared; $(nproc) cores; PostgreSQL"
    echo "$("$PG_BIN/postgres" --version | awk '{print $3}'); $(date -u +%Y-%m-%d)."
    echo
    echo "| claims of $PRESSURE_TTL, $PRESSURE_WORK_US µs of work per job (synchronous_commit = on, $DURATION s) | lease queue | SKIP LOCKED queue |"
    echo "|---|---:|---:|"
    echo "| jobs done | ${done_jobs[pressure/lease]} | ${done_jobs[pressure/skiplocked]} |"
    echo "| completions refused by the fence (claim ended) | ${refused[pressure/lease]} | ${refused[pressure/skiplocked]} |"
    echo "| jobs granted although already done (dropped after the fetch) | ${stale[pressure/lease]} | - |"
    echo "| jobs completed twice | ${duplicates[pressure/lease]} | ${duplicates[pressure/skiplocked]} |"
    echo "| completions − jobs done | $(( ${completions[pressure/lease]} - ${done_jobs[pressure/lease]} )) | $(( ${completions[pressure/skiplocked]} - ${done_jobs[pressure/skiplocked]} )) |"
    echo
    echo "Timed runs: jobs granted although already done (lease queue): $(for sync in "${SYNC_MODES[@]}"; do printf '%s with synchronous_commit = %s; ' "${stale[$sync/lease]}" "$sync"; done | sed 's/; $//')."
} > "$OUT"
echo
cat "$OUT"
