#!/usr/bin/env bash
# Queue benchmark: WORKERS workers (8) each claim BATCH jobs (10) at a time from a queue of JOBS
# jobs (100,000), complete each job with a fenced update and give the claim back. Two queues on
# the same jobs table, run alternately in one run with pgbench (prepared statements):
#   lease:      one statement that calls lease_acquire_any (snapshot_consistent) over the oldest
#               ready jobs and reads the granted ones, then per job one statement that releases
#               the lease and, only if that succeeded, updates the job;
#   skiplocked: SELECT ... FOR UPDATE SKIP LOCKED claiming with locked_by/locked_until, then per
#               job an update fenced by locked_by/locked_until that also clears them;
#   lease-batch, skiplocked-batch: the same claims, and the whole batch completed in one
#               statement: lease_release_each and an update of the jobs it released, against
#               one fenced update of the batch's jobs.
# Every run starts from a fresh queue; jobs/s counts the jobs done from the start to the last
# completion, and every run checks that no job was completed twice. A last pair of runs gives
# claims a shorter life than the work (takeovers happen) to show each fence refusing completions.
# Exits with status 1 if any job was completed twice, or granted to a lease claim although done.
# Usage: bench/queue/run.sh PORT [seconds per run, default 10], against a running server with the
# extension preloaded (bench/run.sh starts one). Writes bench/results/queue.md and queue.raw.
# Settings: LEASE_BENCH_ROUNDS (3), LEASE_BENCH_SYNC ("on off"), LEASE_BENCH_RESULTS (the output
# directory), LEASE_QUEUE_JOBS, LEASE_QUEUE_WORKERS, LEASE_QUEUE_BATCH.
source "$(dirname "$0")/../../scripts/common.sh"

PORT=$1
DURATION=${2:-10}
ROUNDS=${LEASE_BENCH_ROUNDS:-3}
read -r -a SYNC_MODES <<< "${LEASE_BENCH_SYNC:-on off}"
JOBS=${LEASE_QUEUE_JOBS:-100000}
WORKERS=${LEASE_QUEUE_WORKERS:-8}
BATCH=${LEASE_QUEUE_BATCH:-10}
# The lease queue's candidates per claim: twice as many as all workers hold at once. The oldest
# ready jobs include the ones being worked on (held, which lease_acquire_any skips after one
# index probe each), and shuffled they leave claimers at the same moment mostly different jobs.
CANDIDATES=$(( 2 * WORKERS * BATCH ))
TTL=30s                          # claims outlive the work: nothing expires in the timed runs
PRESSURE_TTL=20ms                # ... and here they do: BATCH jobs of PRESSURE_WORK_US each
PRESSURE_WORK_US=3000
QUEUES=(lease skiplocked lease-batch skiplocked-batch)
HERE=$ROOT/bench/queue
OUT=${LEASE_BENCH_RESULTS:-$ROOT/bench/results}/queue.md
RAW=${OUT%.md}.raw
psql_bench=("$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1)
SCRIPTS=$(mktemp -d)
trap 'rm -rf "$SCRIPTS"' EXIT

# The pgbench script of one worker's batch: claim, then BATCH completions, each after WORK_US
# microseconds of "work" (none in the timed runs), or (a -batch queue) all the work and then one
# completion of the whole batch.
build_script() {
    local queue=$1 work_us=$2 i
    local file=$SCRIPTS/$queue-$work_us.sql base=${1%-batch}
    {
        # The claim's numbers as constants: a LIMIT given as a parameter would be planned anew on
        # every call.
        sed -e "s/LIMIT :batch/LIMIT $BATCH/" -e "s/LIMIT CANDIDATES)/LIMIT $CANDIDATES)/" \
            -e "s/:ttl::interval, BATCH,/:ttl::interval, $BATCH,/" "$HERE/${base}_claim.sql"
        if [ "$queue" != "$base" ]; then
            if [ "$work_us" -gt 0 ]; then echo "\\sleep $(( work_us * BATCH )) us"; fi
            cat "$HERE/${base}_complete_batch.sql" "$HERE/refused_batch.sql"
        else
            for i in $(seq 1 "$BATCH"); do
                echo "\\set i $i"
                if [ "$work_us" -gt 0 ]; then echo "\\sleep $work_us us"; fi
                cat "$HERE/${base}_complete.sql" "$HERE/refused.sql"
            done
        fi
    } > "$file"
    echo "$file"
}

# One run on a fresh queue. Prints: jobs/s, jobs done, completions, jobs completed twice,
# refused, stale, failed transactions, claims (pgbench transactions), WAL bytes, and the mean
# latency (µs) of the claim and of a completion statement.
run_queue() {
    local queue=$1 sync=$2 ttl=$3 work_us=$4 key=$5
    local script started lsn log claims failed threads=$(( WORKERS < 2 ? 1 : 2 ))
    script=$(build_script "$queue" "$work_us")
    "${psql_bench[@]}" -v jobs="$JOBS" -f "$HERE/fill.sql"
    IFS='|' read -r started lsn <<< "$("${psql_bench[@]}" -At -c "SELECT clock_timestamp(), pg_current_wal_lsn()")"
    log=$(PGOPTIONS="-c synchronous_commit=$sync" "$PG_BIN/pgbench" -n -r -M prepared -T "$DURATION" \
        -c "$WORKERS" -j "$threads" -h 127.0.0.1 -p "$PORT" -U postgres \
        -D ttl="$ttl" -D batch="$BATCH" -f "$script" postgres 2>&1) \
        || { echo "$log" >&2; exit 1; }
    { echo "== $key"; echo "$log"; } >> "$RAW"
    claims=$(echo "$log" | awk '/number of transactions actually processed/ {print $6}')
    failed=$(echo "$log" | awk '/number of failed transactions/ {print $5}')
    "${psql_bench[@]}" -At -F ' ' -v started="$started" -v lsn="$lsn" -f "$HERE/verify.sql" \
        | awk -v failed="$failed" -v claims="$claims" -v latencies="$(statement_latencies <<< "$log")" \
            '{printf "%.0f %d %d %d %d %d %d %d %d %s\n", ($6 > 0 ? $1 / $6 : 0), $1, $2, $3, $4, $5, failed, claims, $7, latencies}'
}

# From pgbench -r's per-statement latencies (ms): the mean µs of the claim (the script's first
# statement) and the completions.
statement_latencies() {
    awk '/^ +[0-9.]+ +[0-9]+ +[^\\ ]/ {
             ms = $1; $1 = $2 = ""; sql = $0
             if (!seen++) claim = ms
             else if (sql ~ /WITH (done|released) AS/) { done += ms; n++ }
         }
         END {printf "%.0f %.0f", claim * 1000, (n ? done / n * 1000 : 0)}'
}

median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

"${psql_bench[@]}" -f "$HERE/setup.sql" >/dev/null 2>&1
: > "$RAW"
FIELDS=(rate done completions twice refused stale failed claims wal claim_us complete_us)
declare -A total   # total[key/field], summed over a configuration's runs
record() {   # record KEY VALUES...: adds one run's figures to the totals
    local key=$1 i
    shift
    local values=("$@")
    for i in "${!FIELDS[@]}"; do
        total[$key/${FIELDS[$i]}]=$(( ${total[$key/${FIELDS[$i]}]:-0} + ${values[$i]} ))
    done
}
declare -A rate samples

# Timed runs: each queue ROUNDS times per synchronous_commit mode, in alternating order; the
# median jobs/s is reported, everything else is summed over all runs.
for sync in "${SYNC_MODES[@]}"; do
    for round in $(seq 1 "$ROUNDS"); do
        for i in "${!QUEUES[@]}"; do
            queue=${QUEUES[$(( (i + round) % ${#QUEUES[@]} ))]}
            figures=$(run_queue "$queue" "$sync" "$TTL" 0 "$sync/$queue") || exit 1
            samples[$sync/$queue]+=" ${figures%% *}"
            # shellcheck disable=SC2086
            record "$sync/$queue" $figures
        done
    done
    for queue in "${QUEUES[@]}"; do
        # shellcheck disable=SC2086
        rate[$sync/$queue]=$(median ${samples[$sync/$queue]})
        printf '%-10s synchronous_commit=%-3s median %6s jobs/s (runs:%s)  completed twice: %s\n' \
            "$queue" "$sync" "${rate[$sync/$queue]}" "${samples[$sync/$queue]}" "${total[$sync/$queue/twice]}"
    done
done

# Takeover runs: claims end while their jobs are being worked on.
for queue in "${QUEUES[@]}"; do
    figures=$(run_queue "$queue" on "$PRESSURE_TTL" "$PRESSURE_WORK_US" "takeover/$queue") || exit 1
    # shellcheck disable=SC2086
    record "takeover/$queue" $figures
done

# per_job KEY FIELD: a summed field divided by the jobs done.
per_job() { awk -v v="${total[$1/$2]}" -v d="${total[$1/done]}" 'BEGIN {printf "%.0f", (d > 0 ? v / d : 0)}'; }
jobs_per_claim() { awk -v d="${total[$1/done]}" -v c="${total[$1/claims]}" 'BEGIN {printf "%.1f", (c > 0 ? d / c : 0)}'; }
# statement_ms KEY: mean latencies of the claim and completion statements over the runs.
statement_ms() {
    awk -v c="${total[$1/claim_us]}" -v d="${total[$1/complete_us]}" -v n="$ROUNDS" \
        'BEGIN {printf "%.2f / %.2f", c / n / 1000, d / n / 1000}'
}
name() {
    case $1 in
        lease) echo "lease" ;;
        skiplocked) echo "SKIP LOCKED" ;;
        lease-batch) echo "lease, batch completed in one call" ;;
        skiplocked-batch) echo "SKIP LOCKED, batch completed in one update" ;;
    esac
}

{
    echo "| synchronous_commit | lease queue (jobs/s) | SKIP LOCKED queue (jobs/s) | lease / SKIP LOCKED | lease, batch completed in one call (jobs/s) | SKIP LOCKED, batch completed in one update (jobs/s) | lease / SKIP LOCKED, batches |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for sync in "${SYNC_MODES[@]}"; do
        l=${rate[$sync/lease]} s=${rate[$sync/skiplocked]}
        lb=${rate[$sync/lease-batch]} sb=${rate[$sync/skiplocked-batch]}
        echo "| $sync | $l | $s | $(awk -v l="$l" -v s="$s" 'BEGIN {printf "%.2f", (s > 0 ? l / s : 0)}') | $lb | $sb | $(awk -v l="$lb" -v s="$sb" 'BEGIN {printf "%.2f", (s > 0 ? l / s : 0)}') |"
    done
    echo
    echo "| queue | synchronous_commit | jobs/s of each run | jobs done | jobs completed twice | completions − jobs done | jobs per claim | WAL bytes per job | granted although done | claim / completion (ms) | failed transactions |"
    echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for sync in "${SYNC_MODES[@]}"; do
        for queue in "${QUEUES[@]}"; do
            k=$sync/$queue
            echo "| $(name "$queue") | $sync |${samples[$k]} | ${total[$k/done]} | ${total[$k/twice]} | $(( total[$k/completions] - total[$k/done] )) | $(jobs_per_claim "$k") | $(per_job "$k" wal) | ${total[$k/stale]} | $(statement_ms "$k") | ${total[$k/failed]} |"
        done
    done
    echo
    echo "$WORKERS workers claiming $BATCH jobs at a time from a queue of $JOBS jobs, one transaction per claim and"
    echo "one per completion (per batch in the batch queues); median of $ROUNDS alternating runs of $DURATION s each, every run on a fresh queue"
    echo "(jobs/s: jobs done from the start to the last completion). The lease queue offers each claim the"
    echo "oldest $CANDIDATES ready jobs, shuffled, to lease_acquire_any with snapshot_consistent, and reads the"
    echo "granted jobs in the same statement. Statement latencies are pgbench's means per call (one claim"
    echo "and $BATCH completions per batch, or one completion of the batch)."
    echo "pgbench -M prepared; $(nproc) cores; PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}'); $(date -u +%Y-%m-%d)."
    echo
    echo "| claims of $PRESSURE_TTL, $PRESSURE_WORK_US µs of work per job (synchronous_commit = on, $DURATION s) | $(for q in "${QUEUES[@]}"; do printf '%s | ' "$(name "$q")"; done)"
    echo "|---|$(for _ in "${QUEUES[@]}"; do printf -- '---:|'; done)"
    takeover_row() {  # LABEL FIELD
        printf '| %s |' "$1"
        for q in "${QUEUES[@]}"; do printf ' %s |' "${total[takeover/$q/$2]}"; done
        echo
    }
    takeover_row "jobs done" done
    takeover_row "completions refused by the fence (claim ended)" refused
    takeover_row "jobs granted although already done (SKIP LOCKED: not counted, 0)" stale
    takeover_row "jobs completed twice" twice
    printf '| completions − jobs done |'
    for q in "${QUEUES[@]}"; do printf ' %s |' "$(( total[takeover/$q/completions] - total[takeover/$q/done] ))"; done
    echo
} > "$OUT"
echo
cat "$OUT"

# A job completed twice is a broken fence, a job granted although done a broken snapshot_consistent
# claim: fail loudly (the tables above show where).
for key in "${!total[@]}"; do
    case $key in
        */twice) [ "${total[$key]}" = 0 ] || { echo "FAILED: jobs completed twice in ${key%/twice}" >&2; exit 1; } ;;
        */stale) [ "${total[$key]}" = 0 ] || { echo "FAILED: jobs granted although done in ${key%/stale}" >&2; exit 1; } ;;
        */completions) [ "${total[$key]}" = "${total[${key%/completions}/done]}" ] \
            || { echo "FAILED: completions differ from jobs done in ${key%/completions}" >&2; exit 1; } ;;
    esac
done
