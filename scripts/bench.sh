#!/usr/bin/env bash
# shellcheck disable=SC2016  # '...' snippets for `bash -c` take "$1" on purpose.
# TREMpy benchmark (issue #6), run by `scripts/dev.sh bench` once the stack is up (it can also be
# run directly against a running stack). Prints one table: every TREMpy figure next to an anchor
# measured in the same run (native logical replication, or a binary COPY pipe). docs/benchmarks.md
# explains each figure and shows a full run.
#
# Cases (BENCH_CASES, default "batch txns load latency rss"), all on bench.t(id bigint primary key,
# a int, b text, c timestamptz, d numeric(12,2)):
#   batch    CDC catch-up: BENCH_ROWS rows (default 1,000,000) in 1000-row transactions
#   txns     CDC catch-up: BENCH_TXNS one-row transactions (default 100,000)
#   latency  steady latency: pgbench writes one row per transaction at BENCH_RATE rows/s for
#            BENCH_SECONDS s (defaults 2000 / 60) with the consumer running
#   rss      peak memory: one transaction of BENCH_RSS_ROWS rows (default 1,000,000)
# Per catch-up case:
#   TREMpy catch-up  a task is created and running, then stopped while the backlog is written
#                    (its slot holds the position, like a disabled subscription); start_task, and
#                    the time until its counters show the whole backlog published to RabbitMQ is
#                    the decode+publish time; only then trempy-applier starts, and the time until
#                    the target has every row (max(id), then count + md5 checked) is the drain time.
#   native catch-up  CREATE PUBLICATION on the source; CREATE SUBSCRIPTION on the target (disabled,
#                    copy_data = false, create_slot = true) before the backlog; then ENABLE and the
#                    time until the target has every row.
#   end-to-end       the consumer runs while the backlog is written (TREMpy task + applier, resp. an
#                    enabled subscription): time from the first insert to the target having it all.
#   COPY pipe        (batch only) COPY (SELECT * FROM bench.t) TO STDOUT (binary) | COPY bench.t2
#                    FROM STDIN (binary) between the two databases: the anchor of the full load.
#   load             full load: BENCH_ROWS rows at the source; the binary COPY pipe into the
#                    empty target table, then a full_load task into the emptied target table with
#                    the applier running (create_task to the target having every row); best of 2.
#   CPU              utime+stime (/proc/<pid>/stat) per million changes over the catch-up: the
#                    task's worker, RabbitMQ's beam.smp, trempy-applier and its target backend,
#                    next to the native walsender and apply worker.
# latency: per row, target commit time - source commit time. Source: pg_xact_commit_timestamp(xmin)
#   (track_commit_timestamp is on at the source). Target: the commit record of the transaction
#   that wrote the row (its xmin), read from the target's WAL with pg_walinspect (no restart, no
#   track_commit_timestamp needed at the target; a physical slot holds the WAL meanwhile).
#   p50/p95/p99/max, TREMpy (task + applier) next to a streaming subscription; and the CPU of
#   the same processes as in the catch-up cases, per million rows, over the writer's run.
# rss: trempy-applier started fresh on the queued transaction, VmHWM once the target has it; the
#   task's worker RssAnon sampled every 100 ms while it decodes and publishes; next to the RssAnon
#   peaks of the native walsender and apply worker (sampled the same way).
# Results: one table on stdout; one JSON line per row appended to <state dir>/bench-results.jsonl.
# Targets of the issue are printed for information; they never fail the run. It fails only on
# errors (e.g. no convergence within BENCH_TIMEOUT).
#
# Environment:
#   BENCH_QUICK=1            smoke run with small defaults (20000 / 5000 rows, 500 rows/s for 10 s,
#                            a 100000-row transaction); its numbers are not meaningful
#   BENCH_CASES              which cases to run (default "batch txns load latency rss")
#   BENCH_ROWS, BENCH_TXNS   catch-up backlog sizes (defaults 1000000 / 100000)
#   BENCH_RATE, BENCH_SECONDS  latency writer rate (rows = transactions per second) and duration
#                            (defaults 2000 / 60)
#   BENCH_CLIENTS            pgbench connections sharing that rate (default 4)
#   BENCH_RSS_ROWS           rows of the single transaction of the rss case (default 1000000)
#   BENCH_TIMEOUT            seconds allowed for each wait (default 1800)
#   BENCH_SYNC_COMMIT        synchronous_commit of the session writing the catch-up backlogs
#                            (default off: 100k fsyncs would dominate; the backlog itself is
#                            identical). The latency writer always commits with the server default.
#   BENCH_APPLIER_ARGS       extra arguments for `trempy-applier run` (e.g. "--prefetch 64")
set -euo pipefail

# Reuse the stack helpers (paths, password, rabbitmqctl) without running a dev.sh command.
# shellcheck source=scripts/dev.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/dev.sh"

say() { printf 'bench: %s\n' "$*" >&2; }
fail() {
    printf 'bench: ERROR: %s\n' "$*" >&2
    exit 1
}

use_running_stack

QUICK=${BENCH_QUICK:-0}
if [[ $QUICK == 1 ]]; then
    ROWS=${BENCH_ROWS:-20000}
    TXNS=${BENCH_TXNS:-5000}
    RATE=${BENCH_RATE:-500}
    DURATION=${BENCH_SECONDS:-10}
    RSS_ROWS=${BENCH_RSS_ROWS:-100000}
else
    ROWS=${BENCH_ROWS:-1000000}
    TXNS=${BENCH_TXNS:-100000}
    RATE=${BENCH_RATE:-2000}
    DURATION=${BENCH_SECONDS:-60}
    RSS_ROWS=${BENCH_RSS_ROWS:-1000000}
fi
CLIENTS=${BENCH_CLIENTS:-4}
CASES=${BENCH_CASES:-batch txns load latency rss}
TIMEOUT=${BENCH_TIMEOUT:-1800}
SYNC_COMMIT=${BENCH_SYNC_COMMIT:-off}
read -r -a APPLIER_ARGS <<<"${BENCH_APPLIER_ARGS:-}"
for v in ROWS TXNS RATE DURATION RSS_ROWS CLIENTS TIMEOUT; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || fail "$v (BENCH_$v) must be a positive integer (got '${!v}')"
done
[[ $SYNC_COMMIT =~ ^(on|off|local|remote_write|remote_apply)$ ]] || fail "BENCH_SYNC_COMMIT: not a synchronous_commit value: '$SYNC_COMMIT'"
for c in $CASES; do [[ $c =~ ^(batch|txns|load|latency|rss)$ ]] || fail "BENCH_CASES: unknown case '$c' (batch, txns, load, latency, rss)"; done

RESULTS=$TREMPY_STACK_DIR/bench-results.jsonl
RUN_ID=$(date -u +%Y%m%dT%H%M%SZ)
WORK=$(mktemp -d /tmp/trempy-bench.XXXXXX)
# Everything this script creates, by exact name (never another task's or engineer's objects).
BENCH_TASKS=(bench_batch bench_txns bench_batch_e2e bench_txns_e2e bench_load bench_lat bench_rss)
BENCH_SUBS=(bench_sub_batch bench_sub_txns bench_sub_batch_e2e bench_sub_txns_e2e bench_sub_lat bench_sub_rss)
WALHOLD_SLOT=bench_walhold # physical slot at the target: keeps the WAL read by the latency case
PGBENCH=$PG_BIN/pgbench
[[ -x $PGBENCH ]] || fail "$PGBENCH is missing (it comes with postgresql-15)"
CLK_TCK=$(getconf CLK_TCK)

# ------------------------------------------------------------------ helpers

# shellcheck disable=SC2034  # read by sql_on (dev.sh)
SQL_APP=trempy-bench

# since T0: seconds elapsed since T0 (an $EPOCHREALTIME value), 3 decimals.
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'; }
# rate ROWS SECONDS: rows per second, rounded.
rate() { awk -v r="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.0f", r / s; else print "null" }'; }
# ratio A B: A / B, 2 decimals ("null" when either is unknown).
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "null" && a != "" && b != "null" && b != "" && b > 0) printf "%.2f", a / b; else print "null" }'; }
# sum A B...: sum, 3 decimals ("null" if any is unknown).
sum() { awk 'BEGIN { for (i = 1; i < ARGC; i++) { if (ARGV[i] == "null" || ARGV[i] == "") { print "null"; exit } s += ARGV[i] } printf "%.3f", s }' "$@"; }

# cpu_ticks PID: utime + stime of PID in clock ticks; empty if PID is unknown or gone.
cpu_ticks() {
    local stat f
    [[ $1 =~ ^[0-9]+$ ]] || return 0
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    read -r -a f <<<"${stat##*) }" # fields from 3 (state) on: utime is field 14, stime 15
    echo $((f[11] + f[12]))
}
# cpu_s TICKS [TICKS0]: seconds of CPU between two readings ("null" if unknown).
cpu_s() { awk -v a="$1" -v b="${2:-0}" -v hz="$CLK_TCK" 'BEGIN { if (a == "" || b == "") print "null"; else printf "%.2f", (a - b) / hz }'; }
# per_million SECONDS ROWS: SECONDS * 1e6 / ROWS, 2 decimals.
per_million() { awk -v s="$1" -v r="$2" 'BEGIN { if (s == "null" || s == "" || r <= 0) print "null"; else printf "%.2f", s * 1000000 / r }'; }
# machine_busy: busy CPU ticks of the whole machine (all CPUs) so far, from /proc/stat.
machine_busy() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }
# status_kb PID FIELD: a kB field of /proc/PID/status (VmHWM, RssAnon, ...); empty if gone.
status_kb() {
    local k v _
    [[ $1 =~ ^[0-9]+$ ]] || return 0
    while read -r k v _; do
        [[ $k == "$2:" ]] && {
            echo "$v"
            return 0
        }
    done 2>/dev/null <"/proc/$1/status" || true
}
mib() { awk -v k="$1" 'BEGIN { if (k == "" || k == "null") print "null"; else printf "%.1f", k / 1024 }'; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

queue_messages() {
    rabbitmqctl_ -q -s list_queues name messages 2>/dev/null | awk -v q="$1" '$1 == q { print $2; found = 1 } END { if (!found) print 0 }'
}

delete_queues() {
    local task=$1 queues q
    queues=$(rabbitmqctl_ -q -s list_queues name 2>/dev/null) || fail "rabbitmqctl list_queues failed"
    for q in "trempy_queue_$task" "dlx_queue_$task"; do
        if grep -qxF "$q" <<<"$queues"; then
            run_quiet "rabbitmqctl delete_queue $q" rabbitmqctl_ -q delete_queue "$q" || fail "could not delete queue $q"
        fi
    done
}

# The applier's target session is named, so that its backend can be found (CPU).
applier_app_name() { echo "trempy-bench-applier-$1"; }
APPLIER_PID=
start_applier() {
    local task=$1 log=$TREMPY_STACK_DIR/applier-$1.log dsn=$TREMPY_TARGET_DSN
    [[ $dsn == *\?* ]] && dsn+="&" || dsn+="?"
    dsn+="application_name=$(applier_app_name "$task")"
    TREMPY_TARGET_DSN=$dsn NO_COLOR=1 "$TREMPY_APPLIER_BIN" run --task "$task" "${APPLIER_ARGS[@]}" >"$log" 2>&1 </dev/null &
    APPLIER_PID=$!
    APPLIER_LOG=$log
}
applier_backend_pid() { tgt -At -c "SELECT pid FROM pg_stat_activity WHERE application_name = '$(applier_app_name "$1")' ORDER BY backend_start DESC LIMIT 1"; }
wait_applier_connected() {
    wait_until 30 "the applier to connect" grep -q 'applier connected' "$APPLIER_LOG" || fail "the applier did not connect; see $APPLIER_LOG"
}

# running PID: PID exists and is not a zombie (an exited child stays one until `wait`).
running() { [[ -r /proc/$1/stat && $(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) != Z ]]; }
not_running() { ! running "$1"; }

stop_applier() {
    [[ -n $APPLIER_PID ]] || return 0
    if running "$APPLIER_PID"; then
        kill -TERM "$APPLIER_PID" 2>/dev/null || true
        wait_until 30 "applier pid $APPLIER_PID to exit" not_running "$APPLIER_PID" ||
            kill -KILL "$APPLIER_PID" 2>/dev/null || true
    fi
    wait "$APPLIER_PID" 2>/dev/null || true
    APPLIER_PID=
}

applier_alive() {
    [[ -z $APPLIER_PID ]] && return 0
    running "$APPLIER_PID" && return 0
    tail -n 20 "$APPLIER_LOG" | sed 's/^/    /' >&2
    fail "trempy-applier exited; see $APPLIER_LOG"
}

# RSS sampler: start_sampler NAME PID... records, every 100 ms, the largest RssAnon (kB) seen for
# each PID in $WORK/NAME ("pid max_kb" lines); stop_sampler ends it.
SAMPLER_PID=
start_sampler() {
    local sample_file=$WORK/$1
    shift
    (
        declare -A max=()
        for p in "$@"; do max[$p]=0; done
        while :; do
            line=
            for p in "$@"; do
                v=$(status_kb "$p" RssAnon)
                [[ -n $v ]] && ((v > max[$p])) && max[$p]=$v
                line+="$p ${max[$p]}"$'\n'
            done
            printf '%s' "$line" >"$sample_file.tmp" && mv -f "$sample_file.tmp" "$sample_file"
            sleep 0.1
        done
    ) &
    SAMPLER_PID=$!
}
stop_sampler() {
    [[ -n $SAMPLER_PID ]] || return 0
    kill "$SAMPLER_PID" 2>/dev/null || true
    wait "$SAMPLER_PID" 2>/dev/null || true
    SAMPLER_PID=
}
sampled_max() { awk -v p="$2" '$1 == p { print $2 }' "$WORK/$1" 2>/dev/null; }

# drop_trempy_task TASK: task (slot + publication), its queues and its target watermark.
drop_trempy_task() {
    local task=$1
    if [[ $(src -At -c "SELECT count(*) FROM trempy.tasks WHERE task_name = '$task'") != 0 ]]; then
        src -c "SELECT trempy.drop_task('$task')" >/dev/null || fail "trempy.drop_task('$task') failed"
    fi
    delete_queues "$task"
    tgt <<EOF >/dev/null || fail "could not reset the watermark of $task on the target"
DO \$\$ BEGIN
    IF to_regclass('trempy.applier_progress') IS NOT NULL THEN
        DELETE FROM trempy.applier_progress WHERE task_name = '$task';
    END IF;
END \$\$;
EOF
}

# drop_native SUB: subscription (and its slot at the source), publication, leftover slot.
drop_native() {
    local sub=$1 pub=${1/bench_sub_/bench_pub_}
    tgt -c "DROP SUBSCRIPTION IF EXISTS $sub" || fail "DROP SUBSCRIPTION $sub failed"
    src -At <<EOF >/dev/null || fail "dropping publication/slot $pub/$sub failed"
DROP PUBLICATION IF EXISTS $pub;
SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '$sub' AND NOT active;
EOF
}

drop_walhold() {
    tgt -At -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '$WALHOLD_SLOT'" >/dev/null ||
        fail "could not drop the target slot $WALHOLD_SLOT"
}

cleanup() {
    local task sub
    stop_sampler
    stop_applier
    for task in "${BENCH_TASKS[@]}"; do drop_trempy_task "$task"; done
    for sub in "${BENCH_SUBS[@]}"; do drop_native "$sub"; done
    drop_walhold
}

on_exit() {
    local rc=$?
    trap - EXIT
    if ((rc != 0)); then
        say "failed; cleaning up bench objects"
        (
            cleanup
            src -c 'DROP SCHEMA IF EXISTS bench CASCADE'
            tgt -c 'DROP SCHEMA IF EXISTS bench CASCADE'
        ) || say "cleanup failed; rerun the benchmark to clean up"
    fi
    rm -rf -- "$WORK"
    exit "$rc"
}
trap on_exit EXIT

# recreate_tables: bench.t on both sides (empty), and the source's id sequence (latency writer).
recreate_tables() {
    local ddl='CREATE SCHEMA IF NOT EXISTS bench;
DROP TABLE IF EXISTS bench.t;
CREATE TABLE bench.t (id bigint PRIMARY KEY, a int, b text, c timestamptz, d numeric(12,2));'
    src -c "$ddl DROP SEQUENCE IF EXISTS bench.t_id_seq; CREATE SEQUENCE bench.t_id_seq;" || fail "could not create bench.t on the source"
    tgt -c "$ddl" || fail "could not create bench.t on the target"
}

# build_backlog ROWS ROWS_PER_TXN: insert rows 1..ROWS into bench.t at the source, committing
# every ROWS_PER_TXN rows. Deterministic content: every build of ROWS rows is identical.
build_backlog() {
    src <<EOF || fail "building the backlog failed"
SET synchronous_commit = $SYNC_COMMIT;
DO \$\$
DECLARE
    i bigint := 0;
BEGIN
    WHILE i < $1 LOOP
        INSERT INTO bench.t (id, a, b, c, d)
        SELECT g, (g % 100000)::int, md5(g::text), timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second',
               ((g % 1000000) / 100.0)::numeric(12,2)
          FROM generate_series(i + 1, least(i + $2, $1)) AS g;
        COMMIT;
        i := i + $2;
    END LOOP;
END
\$\$;
EOF
}

checksum() { sql_on "$1" -At -c "SELECT count(*) || ' ' || coalesce(md5(string_agg(t::text, ',' ORDER BY id)), '-') FROM bench.t t"; }

# wait_converged T0 ROWS SOURCE_SUM: wait until the target's bench.t equals the source's (polls
# max(id) every 0.2 s, cheap on the primary key; then checks count + md5). Sets CONVERGED_S,
# the seconds from T0 to the poll that saw everything.
wait_converged() {
    local t0=$1 rows=$2 want=$3 deadline=$((SECONDS + TIMEOUT)) max hit
    while :; do
        max=$(tgt -At -c 'SELECT coalesce(max(id), 0) FROM bench.t') || max=0
        if [[ $max == "$rows" ]]; then
            hit=$(since "$t0")
            if [[ $(checksum target) == "$want" ]]; then
                CONVERGED_S=$hit
                return 0
            fi
        fi
        applier_alive
        ((SECONDS < deadline)) || fail "the target did not converge within ${TIMEOUT}s (max(id) = $max of $rows)"
        sleep 0.2
    done
}

create_task() {
    local task=$1
    src -c "SELECT trempy.create_task('$task', '{
        \"task\": {\"task_name\": \"$task\", \"replication_type\": \"cdc\", \"cdc_settings\": {\"mode\": \"upsert\"}},
        \"tables\": [{\"schema_name\": \"bench\", \"table_name\": \"t\", \"priority\": 0}]}')" >/dev/null ||
        fail "trempy.create_task('$task') failed"
    wait_state "$task" running
}

task_state() { src -At -c "SELECT state FROM trempy.status() WHERE task_name = '$1'"; }
wait_state() {
    local task=$1 want=$2 deadline=$((SECONDS + 60))
    until [[ $(task_state "$task") == "$want" ]]; do
        ((SECONDS < deadline)) || {
            src -c "SELECT task_name, state, last_error FROM trempy.status() WHERE task_name = '$task'" >&2 || true
            fail "task $task did not reach state '$want' within 60s"
        }
        sleep 0.2
    done
}
worker_pid() { src -At -c "SELECT worker_pid FROM trempy.status() WHERE task_name = '$1'"; }

# wait_published TASK ROWS TXNS: until the task's counters show every change and transaction.
wait_published() {
    local task=$1 rows=$2 txns=$3 deadline=$((SECONDS + TIMEOUT)) line changes tx
    while :; do
        line=$(src -At -F ' ' -c "SELECT changes_published, transactions_published FROM trempy.status() WHERE task_name = '$task'")
        read -r changes tx <<<"$line"
        changes=${changes:-0} tx=${tx:-0}
        ((changes >= rows && tx >= txns)) && return 0
        ((SECONDS < deadline)) || {
            src -c "SELECT * FROM trempy.status() WHERE task_name = '$task'" >&2 || true
            fail "task $task published $changes/$rows changes, $tx/$txns transactions within ${TIMEOUT}s"
        }
        sleep 0.2
    done
}

# create_subscription SUB ENABLED: publication at the source, subscription (+ its slot) at the
# target. The password goes over stdin, never into argv or the server log.
create_subscription() {
    local sub=$1 enabled=$2 pub=${1/bench_sub_/bench_pub_}
    src -c "CREATE PUBLICATION $pub FOR TABLE bench.t" || fail "CREATE PUBLICATION $pub failed"
    tgt <<EOF || fail "CREATE SUBSCRIPTION $sub failed"
SET log_min_error_statement = panic;
SET log_statement = 'none';
\\set conninfo 'host=127.0.0.1 port=$TREMPY_SOURCE_PORT dbname=source user=trempy password=$(password)'
SELECT format('CREATE SUBSCRIPTION %I CONNECTION %L PUBLICATION %I WITH (enabled = %s, copy_data = false, create_slot = true)',
              '$sub', :'conninfo', '$pub', '$enabled') \\gexec
EOF
}

# wait_subscription_streaming SUB: the apply worker runs and its walsender streams.
wait_subscription_streaming() {
    local sub=$1 deadline=$((SECONDS + 60))
    until [[ $(src -At -c "SELECT count(*) FROM pg_stat_replication WHERE application_name = '$sub' AND state = 'streaming'") == 1 ]]; do
        ((SECONDS < deadline)) || fail "subscription $sub is not streaming after 60s"
        sleep 0.2
    done
}
walsender_pid() { src -At -c "SELECT pid FROM pg_stat_replication WHERE application_name = '$1' LIMIT 1"; }
apply_worker_pid() { tgt -At -c "SELECT pid FROM pg_stat_subscription WHERE subname = '$1' AND relid IS NULL LIMIT 1"; }

# ------------------------------------------------------------------ results

RESULT_ROWS=()
# fmt UNIT VALUE: a table cell.
fmt() {
    [[ $2 == null || -z $2 ]] && {
        echo "n/a"
        return
    }
    case $1 in
        rows/s) echo "$2 rows/s" ;;
        ms) echo "$2 ms" ;;
        cpu_s_per_1m) echo "$2 CPU s/1M" ;;
        MiB) echo "$2 MiB" ;;
        *) echo "$2 $1" ;;
    esac
}
# figure CASE METRIC UNIT TREMPY ANCHOR ANCHOR_VALUE TARGET TARGET_MET [EXTRA_JSON]: one table row
# + one JSON line. TARGET_MET: true, false or null (no target). Values: numbers or null.
figure() {
    local case=$1 metric=$2 unit=$3 tv=$4 anchor=$5 av=$6 target=$7 met=$8 extra=${9:-} r cell
    r=$(ratio "$tv" "$av")
    cell=$target
    [[ -n $target && $met != null ]] && cell+=": $([[ $met == true ]] && echo yes || echo no)"
    local av_cell=- r_cell=-
    [[ $anchor == - ]] || av_cell=$(fmt "$unit" "$av")
    [[ $r == null ]] || r_cell=$r
    local mark=
    [[ -z $DISTURBED ]] || mark="(!) "
    RESULT_ROWS+=("$mark$case|$metric|$(fmt "$unit" "$tv")|$anchor|$av_cell|$r_cell|${cell:--}")
    printf '{"run_id":"%s","quick":%s,"case":"%s","metric":"%s","unit":"%s","trempy":%s,"anchor":"%s","anchor_value":%s,"ratio":%s,"target":"%s","target_met":%s,"nproc":%s,"mem_kb":%s,"postgresql":"%s","rabbitmq":"%s","loadavg_start":"%s","disturbed":%s%s}\n' \
        "$RUN_ID" "$([[ $QUICK == 1 ]] && echo true || echo false)" "$case" "$metric" "$unit" "${tv:-null}" "$anchor" "${av:-null}" "$r" \
        "$target" "$met" "$NPROC" "$MEM_KB" "$PG_VERSION" "$RABBIT_VERSION" "$LOAD_START" \
        "$([[ -n $DISTURBED ]] && printf '"%s"' "$DISTURBED" || echo null)" "${extra:+,$extra}" >>"$RESULTS"
}
# result CASE METRIC ROWS TREMPY_S ANCHOR ANCHOR_S [EXTRA_JSON [TARGET_RATIO]]: a throughput row;
# TARGET_RATIO (e.g. 1.5) prints the issue's target ">= 1.5x native" beside it.
result() {
    local case=$1 metric=$2 rows=$3 ts=$4 anchor=$5 as=$6 extra=${7:-} want=${8:-} tr ar target='' met=null
    tr=$(rate "$rows" "$ts")
    ar=$(rate "$rows" "$as")
    if [[ -n $want ]]; then
        target=">= ${want}x native"
        met=$(awk -v r="$(ratio "$tr" "$ar")" -v w="$want" 'BEGIN { if (r == "null") print "null"; else print (r + 0 >= w + 0) ? "true" : "false" }')
    fi
    figure "$case" "$metric" rows/s "$tr" "$anchor" "$ar" "$target" "$met" \
        "\"rows\":$rows,\"trempy_s\":$ts,\"trempy_rows_per_s\":$tr,\"anchor_s\":$as,\"anchor_rows_per_s\":$ar${extra:+,$extra}"
}

DETAILS=()
detail() { DETAILS+=("$*"); }

# The stack is shared (other engineers' end-to-end tests restart servers): every case checks that
# neither PostgreSQL cluster nor RabbitMQ restarted while it ran, and marks its rows otherwise.
stack_epoch() {
    printf '%s %s %s' "$(src -At -c 'SELECT pg_postmaster_start_time()' | tr ' ' _)" \
        "$(tgt -At -c 'SELECT pg_postmaster_start_time()' | tr ' ' _)" "$(rabbit_pid)"
}
CASE_EPOCH=
DISTURBED=
DISTURBED_ANY=0
case_begin() {
    CASE_EPOCH=$(stack_epoch)
    DISTURBED=
}
# case_disturbed REASON: mark the current case's rows.
case_disturbed() {
    DISTURBED+="${DISTURBED:+; }$1"
}
# case_check LABEL: before a case's rows are recorded.
case_check() {
    local now a b c x y z
    now=$(stack_epoch)
    read -r a b c <<<"$CASE_EPOCH"
    read -r x y z <<<"$now"
    [[ $a == "$x" ]] || case_disturbed "the source PostgreSQL restarted"
    [[ $b == "$y" ]] || case_disturbed "the target PostgreSQL restarted"
    [[ $c == "$z" ]] || case_disturbed "RabbitMQ restarted"
    if [[ -n $DISTURBED ]]; then
        DISTURBED_ANY=1
        say "WARNING: $1: $DISTURBED during the case (shared stack): its rows are marked (!)"
        detail "(!) $1: DISTURBED: $DISTURBED during the case; rerun for meaningful figures"
    fi
}

# ------------------------------------------------------------------ catch-up cases

# run_load_case ROWS: a table of ROWS rows at the source; the binary COPY pipe into an empty
# target table, then a TREMpy full_load task into the emptied target table (applier running, from
# create_task to the target having every row, checked by count + md5), twice each, best kept.
run_load_case() {
    local rows=$1 t0 want copy_s load_s best_copy= best_load= i task=bench_load
    say "== case load: $rows rows"
    case_begin
    recreate_tables
    build_backlog "$rows" 100000
    want=$(checksum source)
    for i in 1 2; do
        tgt -c 'TRUNCATE bench.t' >/dev/null || fail "could not empty bench.t on the target"
        t0=$EPOCHREALTIME
        src -c 'COPY (SELECT * FROM bench.t) TO STDOUT (FORMAT binary)' | tgt -c 'COPY bench.t FROM STDIN (FORMAT binary)' >/dev/null ||
            fail "the COPY pipe failed"
        copy_s=$(since "$t0")
        [[ $(checksum target) == "$want" ]] || fail "the COPY pipe did not copy every row"
        say "[load] COPY pipe #$i: ${copy_s}s"
        best_copy=$(awk -v a="$copy_s" -v b="$best_copy" 'BEGIN { print (b == "" || a < b) ? a : b }')

        tgt -c 'TRUNCATE bench.t' >/dev/null || fail "could not empty bench.t on the target"
        start_applier "$task"
        wait_applier_connected
        t0=$EPOCHREALTIME
        src -c "SELECT trempy.create_task('$task', '{
            \"task\": {\"task_name\": \"$task\", \"replication_type\": \"full_load\"},
            \"tables\": [{\"schema_name\": \"bench\", \"table_name\": \"t\", \"priority\": 0}]}')" >/dev/null ||
            fail "trempy.create_task('$task') failed"
        wait_converged "$t0" "$rows" "$want"
        load_s=$CONVERGED_S
        stop_applier
        drop_trempy_task "$task"
        say "[load] TREMpy full load #$i: ${load_s}s"
        best_load=$(awk -v a="$load_s" -v b="$best_load" 'BEGIN { print (b == "" || a < b) ? a : b }')
    done
    case_check "load: $rows rows"
    figure "full load: $rows rows" "TREMpy full load (create_task -> all rows in target)" rows/s "$(rate "$rows" "$best_load")" \
        "COPY binary pipe" "$(rate "$rows" "$best_copy")" "" null "\"rows\":$rows,\"trempy_s\":$best_load,\"anchor_s\":$best_copy"
    detail "load: best of two runs each: TREMpy full load ${best_load}s, COPY binary pipe ${best_copy}s ($rows rows, 5 columns)"
}

# run_case NAME ROWS ROWS_PER_TXN
run_case() {
    local name=$1 rows=$2 step=$3 txns task sub t0 want
    local slot_before slot_moves startup_s build_s publish_s drain_s e2e_s native_s native_build_s native_e2e_s native_e2e_build_s e2e_build_s copy_s
    local msgs queue_msgs progress
    local beam wpid wpid_end m0 m1 m2 m3 b0 bp b1 b2 w1 w2 a_cpu abpid ab_cpu ws_pid aw_pid ws_cpu aw_cpu nm0 nm1
    txns=$(((rows + step - 1) / step))
    task=bench_$name
    sub=bench_sub_$name
    say "== case $name: $rows rows in $txns transactions of $step row(s)"
    case_begin

    # --- TREMpy catch-up: backlog with the task stopped, then decode+publish, then drain.
    recreate_tables
    create_task "$task"
    src -c "SELECT trempy.stop_task('$task')" >/dev/null
    wait_state "$task" stopped
    say "[$name] TREMpy: building the backlog (task stopped, slot kept)"
    t0=$EPOCHREALTIME
    build_backlog "$rows" "$step"
    build_s=$(since "$t0")
    want=$(checksum source)
    say "[$name] TREMpy: backlog built in ${build_s}s; start_task, waiting for decode+publish"
    slot_before=$(src -At -F ' ' -c "SELECT restart_lsn, confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'trempy_$task'")
    beam=$(rabbit_pid)
    m0=$(machine_busy)
    b0=$(cpu_ticks "$beam")
    t0=$EPOCHREALTIME
    src -c "SELECT trempy.start_task('$task')" >/dev/null
    wait_state "$task" running
    startup_s=$(since "$t0")
    # start_task launches a new worker: its whole CPU time is this catch-up's.
    wpid=$(worker_pid "$task")
    wait_published "$task" "$rows" "$txns"
    publish_s=$(since "$t0")
    w1=$(cpu_ticks "$wpid")
    bp=$(cpu_ticks "$beam")
    m1=$(machine_busy)
    msgs=$(src -At -F ' ' -c "SELECT messages_published || ' ' || coalesce(lag_bytes::text, '-') FROM trempy.status() WHERE task_name = '$task'")
    # Each decoding call re-reads the WAL from the slot's restart_lsn: show how far it moved.
    slot_moves=$(src -At -F '|' -c "SELECT pg_size_pretty(pg_wal_lsn_diff(restart_lsn, '${slot_before% *}')), pg_size_pretty(pg_wal_lsn_diff(confirmed_flush_lsn, '${slot_before#* }')) FROM pg_replication_slots WHERE slot_name = 'trempy_$task'")
    # RabbitMQ refreshes quorum queue counters every few seconds: give them up to 10 s to
    # catch up with messages_published (not timed).
    local q_deadline=$((SECONDS + 10))
    while queue_msgs=$(queue_messages "trempy_queue_$task") && ((queue_msgs < ${msgs%% *} && SECONDS < q_deadline)); do
        sleep 0.5
    done
    say "[$name] TREMpy: published in ${publish_s}s (messages_published, lag_bytes: $msgs; queue depth $queue_msgs); starting the applier"
    # CPU is not counted during that wait (rabbitmqctl calls cost the node CPU too).
    b1=$(cpu_ticks "$beam")
    m3=$(machine_busy)
    t0=$EPOCHREALTIME
    start_applier "$task"
    wait_converged "$t0" "$rows" "$want"
    drain_s=$CONVERGED_S
    a_cpu=$(cpu_ticks "$APPLIER_PID")
    abpid=$(applier_backend_pid "$task")
    ab_cpu=$(cpu_ticks "$abpid")
    w2=$(cpu_ticks "$wpid")
    b2=$(cpu_ticks "$beam")
    m2=$(machine_busy)
    wpid_end=$(worker_pid "$task")
    progress=$(tgt -At -F ' ' -c "SELECT transactions_applied, changes_applied FROM trempy.applier_progress WHERE task_name = '$task'")
    stop_applier
    say "[$name] TREMpy: drained in ${drain_s}s (applier_progress transactions, changes: $progress)"
    drop_trempy_task "$task"
    local worker_note=
    if [[ -z $wpid || $wpid != "$wpid_end" || -z $w2 ]]; then
        worker_note=" (worker pid changed $wpid -> $wpid_end: CPU of the first worker only, a lower bound)"
        [[ -n $w2 ]] || w2=$w1
    fi

    # --- native catch-up: disabled subscription with its slot, backlog, ENABLE.
    recreate_tables
    create_subscription "$sub" false
    say "[$name] native: building the backlog (subscription disabled, slot created)"
    t0=$EPOCHREALTIME
    build_backlog "$rows" "$step"
    native_build_s=$(since "$t0")
    [[ $(checksum source) == "$want" ]] || fail "the native backlog differs from the TREMpy one"
    say "[$name] native: backlog built in ${native_build_s}s; ENABLE, waiting for the target"
    nm0=$(machine_busy)
    t0=$EPOCHREALTIME
    tgt -c "ALTER SUBSCRIPTION $sub ENABLE"
    wait_converged "$t0" "$rows" "$want"
    native_s=$CONVERGED_S
    # ENABLE starts both the apply worker and its walsender: their whole CPU time is this catch-up's.
    ws_pid=$(walsender_pid "$sub")
    aw_pid=$(apply_worker_pid "$sub")
    ws_cpu=$(cpu_ticks "$ws_pid")
    aw_cpu=$(cpu_ticks "$aw_pid")
    nm1=$(machine_busy)
    say "[$name] native: caught up in ${native_s}s"
    drop_native "$sub"

    # --- TREMpy end-to-end: task + applier running while the backlog is written.
    recreate_tables
    create_task "${task}_e2e"
    start_applier "${task}_e2e"
    wait_applier_connected
    say "[$name] TREMpy end-to-end: building the backlog with the applier running"
    t0=$EPOCHREALTIME
    build_backlog "$rows" "$step"
    e2e_build_s=$(since "$t0")
    wait_converged "$t0" "$rows" "$want"
    e2e_s=$CONVERGED_S
    stop_applier
    say "[$name] TREMpy end-to-end: ${e2e_s}s from the first insert (backlog written in ${e2e_build_s}s)"
    drop_trempy_task "${task}_e2e"

    # --- native end-to-end: enabled subscription while the backlog is written.
    recreate_tables
    create_subscription "${sub}_e2e" true
    wait_subscription_streaming "${sub}_e2e"
    say "[$name] native end-to-end: building the backlog with the subscription streaming"
    t0=$EPOCHREALTIME
    build_backlog "$rows" "$step"
    native_e2e_build_s=$(since "$t0")
    wait_converged "$t0" "$rows" "$want"
    native_e2e_s=$CONVERGED_S
    say "[$name] native end-to-end: ${native_e2e_s}s from the first insert (backlog written in ${native_e2e_build_s}s)"
    drop_native "${sub}_e2e"

    local label="$name: $rows rows / $txns txns"
    case_check "$label"
    local common="\"txns\":$txns,\"rows_per_txn\":$step,\"sync_commit\":\"$SYNC_COMMIT\""
    local want_ratio=1.0
    ((step == 1)) && want_ratio=1.5
    result "$label" "catch-up total (publish + drain)" "$rows" "$(sum "$publish_s" "$drain_s")" \
        "native sub catch-up" "$native_s" "$common" "$want_ratio"
    result "$label" "decode+publish (slot -> RabbitMQ)" "$rows" "$publish_s" "native sub catch-up" "$native_s" \
        "$common,\"worker_start_s\":$startup_s"
    result "$label" "apply drain (queue -> target)" "$rows" "$drain_s" "native sub catch-up" "$native_s" \
        "$common,\"messages_published\":${msgs%% *},\"queue_messages\":$queue_msgs"
    result "$label" "end-to-end (applier live)" "$rows" "$e2e_s" "native end-to-end" "$native_e2e_s" \
        "$common,\"trempy_build_s\":$e2e_build_s,\"native_build_s\":$native_e2e_build_s"

    # --- CPU per million changes over the catch-up.
    local w_s beam_s beam_pub_s a_s ab_s apply_s total_s ws_s aw_s ntotal_s m_s nm_s
    w_s=$(cpu_s "$w2")
    beam_s=$(sum "$(cpu_s "$bp" "$b0")" "$(cpu_s "$b2" "$b1")")
    beam_pub_s=$(cpu_s "$bp" "$b0")
    a_s=$(cpu_s "$a_cpu")
    ab_s=$(cpu_s "$ab_cpu")
    apply_s=$(sum "$a_s" "$ab_s")
    total_s=$(sum "$w_s" "$beam_s" "$apply_s")
    ws_s=$(cpu_s "$ws_cpu")
    aw_s=$(cpu_s "$aw_cpu")
    ntotal_s=$(sum "$ws_s" "$aw_s")
    m_s=$(sum "$(cpu_s "$m1" "$m0")" "$(cpu_s "$m2" "$m3")")
    nm_s=$(cpu_s "$nm1" "$nm0")
    local cpu_common="$common,\"rows\":$rows"
    figure "$label" "CPU: task worker (decode+publish)" cpu_s_per_1m "$(per_million "$w_s" "$rows")" "native walsender" "$(per_million "$ws_s" "$rows")" "" null \
        "$cpu_common,\"trempy_cpu_s\":$w_s,\"anchor_cpu_s\":$ws_s,\"worker_pid_changed\":$([[ -n $worker_note ]] && echo true || echo false)"
    figure "$label" "CPU: RabbitMQ beam.smp" cpu_s_per_1m "$(per_million "$beam_s" "$rows")" "-" null "" null \
        "$cpu_common,\"trempy_cpu_s\":$beam_s,\"during_publish_cpu_s\":$beam_pub_s"
    figure "$label" "CPU: applier + its target backend" cpu_s_per_1m "$(per_million "$apply_s" "$rows")" "native apply worker" "$(per_million "$aw_s" "$rows")" "" null \
        "$cpu_common,\"applier_cpu_s\":$a_s,\"target_backend_cpu_s\":$ab_s,\"anchor_cpu_s\":$aw_s"
    figure "$label" "CPU: all TREMpy processes" cpu_s_per_1m "$(per_million "$total_s" "$rows")" "walsender + apply worker" "$(per_million "$ntotal_s" "$rows")" "" null \
        "$cpu_common,\"trempy_cpu_s\":$total_s,\"anchor_cpu_s\":$ntotal_s,\"machine_busy_cpu_s\":$m_s,\"anchor_machine_busy_cpu_s\":$nm_s"

    # --- COPY pipe anchor (batch only): the same rows, source -> target, binary COPY.
    if [[ $name == batch ]]; then
        tgt -c 'DROP TABLE IF EXISTS bench.t2; CREATE TABLE bench.t2 (LIKE bench.t INCLUDING ALL)' || fail "could not create bench.t2"
        say "[$name] COPY pipe: $rows rows"
        t0=$EPOCHREALTIME
        src -c 'COPY (SELECT * FROM bench.t) TO STDOUT (FORMAT binary)' | tgt -c 'COPY bench.t2 FROM STDIN (FORMAT binary)' ||
            fail "the COPY pipe failed"
        copy_s=$(since "$t0")
        [[ $(tgt -At -c 'SELECT count(*) FROM bench.t2') == "$rows" ]] || fail "the COPY pipe did not copy $rows rows"
        tgt -c 'DROP TABLE bench.t2'
        say "[$name] COPY pipe: ${copy_s}s"
        result "$label" "apply drain (queue -> target)" "$rows" "$drain_s" "COPY binary pipe" "$copy_s" "$common"
        figure "full load: $rows rows" "see the load case" rows/s null "COPY binary pipe" "$(rate "$rows" "$copy_s")" "" null \
            "\"rows\":$rows,\"anchor_s\":$copy_s"
    fi

    detail "$label: backlog write ${build_s}s (native ${native_build_s}s); TREMpy decode+publish ${publish_s}s (of which worker start ${startup_s}s), drain ${drain_s}s; native catch-up ${native_s}s"
    detail "$label: during decode+publish the slot's restart_lsn moved ${slot_moves%|*}, its confirmed_flush_lsn ${slot_moves#*|} (every decoding call starts at restart_lsn)"
    detail "$label: messages_published ${msgs%% *} (lag_bytes after publish ${msgs##* }), RabbitMQ queue depth before the applier $queue_msgs, rows/message $(awk -v r="$rows" -v m="${msgs%% *}" 'BEGIN { if (m > 0) printf "%.0f", r / m; else print "-" }'), applier_progress (txns, changes) $progress"
    detail "$label: end-to-end TREMpy ${e2e_s}s (backlog written in ${e2e_build_s}s), native ${native_e2e_s}s (written in ${native_e2e_build_s}s)${copy_s:+; COPY pipe ${copy_s}s}"
    detail "$label: CPU s over the catch-up: task worker $w_s$worker_note, beam.smp $beam_s (during decode+publish $beam_pub_s), applier $a_s, its target backend $ab_s; whole machine busy $(cpu_s "$m1" "$m0") CPU s during decode+publish, $m_s in all ($(sum "$publish_s" "$drain_s") s). Native: walsender $ws_s, apply worker $aw_s; machine busy $nm_s CPU s in $native_s s"
}

# ------------------------------------------------------------------ steady latency

WALINSPECT=
# ensure_walinspect: pg_walinspect on the target (in schema bench unless it is already installed).
ensure_walinspect() {
    WALINSPECT=$(tgt -At -c "SELECT extnamespace::regnamespace FROM pg_extension WHERE extname = 'pg_walinspect'")
    if [[ -z $WALINSPECT ]]; then
        tgt -c 'CREATE SCHEMA IF NOT EXISTS bench; CREATE EXTENSION pg_walinspect SCHEMA bench' ||
            fail "CREATE EXTENSION pg_walinspect failed on the target (package postgresql-contrib)"
        WALINSPECT=bench
    fi
}

# measure_latency LABEL PID...: run the pgbench writer into bench.t at the source while the
# consumer runs, wait until the target has every row, then compute per-row commit-to-commit
# latencies. Sets LAT (count p50 p95 p99 max avg target_txns; ms), LAT_WRITER (pgbench summary),
# LAT_TAIL_S (time from the writer's end until the target had everything) and LAT_CPU (CPU seconds
# of each PID from the writer's start until then, in order; "null" for a PID that went away).
measure_latency() {
    local label=$1 script=$WORK/writer.sql log=$WORK/pgbench-$1.log start_lsn end_lsn t0 rows want p
    local -a pids=("${@:2}") before=()
    cat >"$script" <<'EOF'
\set v random(1, 1000000)
INSERT INTO bench.t (id, a, b, c, d) VALUES (nextval('bench.t_id_seq'), :v, md5(:v::text), now(), :v / 100.0);
EOF
    start_lsn=$(tgt -At -c 'SELECT pg_current_wal_insert_lsn()')
    say "[latency] $label: pgbench -R $RATE -T $DURATION -c $CLIENTS (one row per transaction)"
    for p in "${pids[@]}"; do before+=("$(cpu_ticks "$p")"); done
    PGPASSWORD=$(password) PGAPPNAME=trempy-bench-writer PGOPTIONS='-c client_min_messages=warning' \
        "$PGBENCH" -n -h "$TREMPY_SOCKET_DIR" -p "$TREMPY_SOURCE_PORT" -U trempy \
        -c "$CLIENTS" -j "$(((CLIENTS < NPROC) ? CLIENTS : NPROC))" -R "$RATE" -T "$DURATION" -f "$script" source >"$log" 2>&1 ||
        {
            sed 's/^/    /' "$log" >&2
            fail "pgbench failed"
        }
    t0=$EPOCHREALTIME
    rows=$(src -At -c 'SELECT count(*) FROM bench.t')
    ((rows > 0)) || fail "pgbench wrote no rows"
    [[ $(src -At -c 'SELECT max(id) FROM bench.t') == "$rows" ]] || fail "bench.t ids are not 1..$rows (a pgbench transaction failed?)"
    want=$(checksum source)
    wait_converged "$t0" "$rows" "$want"
    LAT_TAIL_S=$CONVERGED_S
    LAT_CPU=
    for p in "${!pids[@]}"; do LAT_CPU+="$(cpu_s "$(cpu_ticks "${pids[$p]}")" "${before[$p]}") "; done
    # pg_walinspect reads only flushed WAL, and the native apply worker commits asynchronously:
    # wait until the WAL writer has flushed every commit record.
    end_lsn=$(tgt -At -c 'SELECT pg_current_wal_insert_lsn()')
    wait_until 30 "the target to flush its WAL" wal_flushed_to "$end_lsn" || fail "the target did not flush its WAL up to $end_lsn"
    tgt -c 'DROP TABLE IF EXISTS bench.lat_src; CREATE TABLE bench.lat_src (id bigint PRIMARY KEY, commit_ts timestamptz NOT NULL)' ||
        fail "could not create bench.lat_src"
    src -c 'COPY (SELECT id, pg_xact_commit_timestamp(xmin) FROM bench.t) TO STDOUT' | tgt -c 'COPY bench.lat_src FROM STDIN' ||
        fail "copying the source commit timestamps failed"
    local sql="WITH c AS (
    SELECT xid, split_part(description, ';', 1)::timestamptz AS commit_ts
      FROM $WALINSPECT.pg_get_wal_records_info('$start_lsn', '$end_lsn')
     WHERE resource_manager = 'Transaction' AND record_type = 'COMMIT'),
l AS (
    SELECT extract(epoch FROM c.commit_ts - s.commit_ts) * 1000 AS ms
      FROM bench.t t JOIN bench.lat_src s USING (id) JOIN c ON c.xid = t.xmin)
SELECT count(*),
       round(percentile_disc(0.50) WITHIN GROUP (ORDER BY ms)::numeric, 1),
       round(percentile_disc(0.95) WITHIN GROUP (ORDER BY ms)::numeric, 1),
       round(percentile_disc(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1),
       round(max(ms)::numeric, 1), round(avg(ms)::numeric, 1),
       (SELECT count(DISTINCT xmin::text) FROM bench.t)
  FROM l"
    LAT=$(tgt -At -F ' ' -c "$sql") || fail "computing latencies failed"
    tgt -c 'DROP TABLE bench.lat_src'
    [[ ${LAT%% *} == "$rows" ]] || fail "latency: matched $(cut -d' ' -f1 <<<"$LAT") of $rows rows to a target commit record"
    LAT_WRITER=$(awk -F' = |: ' '
        /^number of transactions actually processed/ { n = $2 }
        /^number of failed transactions/ { f = $2 }
        /^latency average/ { l = $2 }
        /^rate limit schedule lag/ { sub(/^rate limit schedule lag: /, ""); g = $0 }
        /^tps = / { split($2, a, " "); t = a[1] }
        END { printf "%s rows at %.0f rows/s, pgbench latency avg %s, schedule lag %s%s", n, t, l, g, (f != "" && f != "0 (0.000%)") ? ", failed " f : "" }' "$log")
    local max_lag
    max_lag=$(sed -n 's/^rate limit schedule lag: avg [0-9.]* (max \([0-9.]*\)) ms$/\1/p' "$log")
    if awk -v l="${max_lag:-0}" 'BEGIN { exit !(l > 1000) }'; then
        case_disturbed "the $label writer fell up to ${max_lag} ms behind its schedule (the source or the machine stalled)"
    fi
    say "[latency] $label: $LAT_WRITER; target complete ${LAT_TAIL_S}s after the writer; latency ms (n p50 p95 p99 max avg, target txns): $LAT"
}

wal_flushed_to() { [[ $(tgt -At -c "SELECT pg_current_wal_flush_lsn() >= '$1'") == t ]]; }

run_latency() {
    local n p50 p95 p99 max avg ttx nn np50 np95 np99 nmax navg nttx t_writer n_writer t_tail n_tail
    local c_w c_beam c_a c_ab c_ws c_aw c_apply c_total c_ntotal
    say "== case latency: $RATE rows/s for ${DURATION}s, one row per transaction"
    case_begin
    ensure_walinspect
    drop_walhold
    tgt -At -c "SELECT pg_create_physical_replication_slot('$WALHOLD_SLOT', true)" >/dev/null || fail "could not create the target slot $WALHOLD_SLOT"

    recreate_tables
    create_task bench_lat
    start_applier bench_lat
    wait_applier_connected
    measure_latency TREMpy "$(worker_pid bench_lat)" "$(rabbit_pid)" "$APPLIER_PID" "$(applier_backend_pid bench_lat)"
    read -r n p50 p95 p99 max avg ttx <<<"$LAT"
    read -r c_w c_beam c_a c_ab <<<"$LAT_CPU"
    t_writer=$LAT_WRITER t_tail=$LAT_TAIL_S
    stop_applier
    drop_trempy_task bench_lat

    recreate_tables
    create_subscription bench_sub_lat true
    wait_subscription_streaming bench_sub_lat
    measure_latency native "$(walsender_pid bench_sub_lat)" "$(apply_worker_pid bench_sub_lat)"
    read -r nn np50 np95 np99 nmax navg nttx <<<"$LAT"
    read -r c_ws c_aw <<<"$LAT_CPU"
    n_writer=$LAT_WRITER n_tail=$LAT_TAIL_S
    drop_native bench_sub_lat
    drop_walhold

    local label="latency: $RATE rows/s for ${DURATION}s"
    case_check "$label"
    local common="\"rate\":$RATE,\"seconds\":$DURATION,\"clients\":$CLIENTS,\"rows\":$n,\"anchor_rows\":$nn"
    figure "$label" "commit-to-apply p50" ms "$p50" "native sub streaming" "$np50" "" null "$common"
    figure "$label" "commit-to-apply p95" ms "$p95" "native sub streaming" "$np95" "" null "$common"
    local met
    met=$(awk -v p="$p99" -v r="$RATE" 'BEGIN { print (r < 2000) ? "null" : ((p + 0 < 250) ? "true" : "false") }')
    figure "$label" "commit-to-apply p99" ms "$p99" "native sub streaming" "$np99" "< 250 ms at 2k rows/s" "$met" "$common"
    figure "$label" "commit-to-apply max" ms "$max" "native sub streaming" "$nmax" "" null "$common,\"trempy_avg_ms\":$avg,\"anchor_avg_ms\":$navg"
    c_apply=$(sum "$c_a" "$c_ab")
    c_total=$(sum "$c_w" "$c_beam" "$c_apply")
    c_ntotal=$(sum "$c_ws" "$c_aw")
    figure "$label" "CPU: task worker" cpu_s_per_1m "$(per_million "$c_w" "$n")" "native walsender" "$(per_million "$c_ws" "$nn")" "" null \
        "$common,\"trempy_cpu_s\":$c_w,\"anchor_cpu_s\":$c_ws"
    figure "$label" "CPU: applier + its target backend" cpu_s_per_1m "$(per_million "$c_apply" "$n")" "native apply worker" "$(per_million "$c_aw" "$nn")" "" null \
        "$common,\"applier_cpu_s\":$c_a,\"target_backend_cpu_s\":$c_ab,\"anchor_cpu_s\":$c_aw"
    figure "$label" "CPU: all TREMpy processes" cpu_s_per_1m "$(per_million "$c_total" "$n")" "walsender + apply worker" "$(per_million "$c_ntotal" "$nn")" "" null \
        "$common,\"trempy_cpu_s\":$c_total,\"beam_cpu_s\":$c_beam,\"anchor_cpu_s\":$c_ntotal"
    detail "$label: CPU s while writing + draining: task worker $c_w, beam.smp $c_beam, applier $c_a, its target backend $c_ab; native walsender $c_ws, apply worker $c_aw"
    detail "$label: TREMpy writer $t_writer; $n rows in $ttx target transactions; avg ${avg} ms; target complete ${t_tail}s after the writer stopped"
    detail "$label: native writer $n_writer; $nn rows in $nttx target transactions; avg ${navg} ms; target complete ${n_tail}s after the writer stopped"
}

# ------------------------------------------------------------------ peak memory

run_rss() {
    local rows=$RSS_ROWS t0 want wpid w_base w_peak publish_s drain_s a_hwm a_anon msgs ws aw ws_base aw_base ws_peak aw_peak native_s write_s
    local insert="SET synchronous_commit = $SYNC_COMMIT;
INSERT INTO bench.t (id, a, b, c, d)
SELECT g, (g % 100000)::int, md5(g::text), timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second', ((g % 1000000) / 100.0)::numeric(12,2)
  FROM generate_series(1, $rows) AS g;"
    say "== case rss: one transaction of $rows rows"
    case_begin

    recreate_tables
    create_task bench_rss
    wpid=$(worker_pid bench_rss)
    w_base=$(status_kb "$wpid" RssAnon)
    start_sampler worker "$wpid"
    say "[rss] TREMpy: writing the transaction (task running, applier not started)"
    t0=$EPOCHREALTIME
    src -c "$insert" || fail "the $rows-row transaction failed"
    write_s=$(since "$t0")
    wait_published bench_rss "$rows" 1
    publish_s=$(since "$t0")
    stop_sampler
    w_peak=$(sampled_max worker "$wpid")
    [[ $(worker_pid bench_rss) == "$wpid" ]] || say "[rss] WARNING: the task's worker pid changed during the case; its peak is of the first worker only"
    want=$(checksum source)
    msgs=$(src -At -c "SELECT messages_published FROM trempy.status() WHERE task_name = 'bench_rss'")
    say "[rss] TREMpy: written in ${write_s}s, published ${publish_s}s after the first insert ($msgs messages); worker RssAnon peak $(mib "$w_peak") MiB; starting the applier"
    t0=$EPOCHREALTIME
    start_applier bench_rss
    start_sampler applier "$APPLIER_PID"
    wait_converged "$t0" "$rows" "$want"
    drain_s=$CONVERGED_S
    a_hwm=$(status_kb "$APPLIER_PID" VmHWM)
    stop_sampler
    a_anon=$(sampled_max applier "$APPLIER_PID")
    stop_applier
    say "[rss] TREMpy: applied in ${drain_s}s; applier VmHWM $(mib "$a_hwm") MiB"
    drop_trempy_task bench_rss

    recreate_tables
    create_subscription bench_sub_rss true
    wait_subscription_streaming bench_sub_rss
    ws=$(walsender_pid bench_sub_rss)
    aw=$(apply_worker_pid bench_sub_rss)
    ws_base=$(status_kb "$ws" RssAnon)
    aw_base=$(status_kb "$aw" RssAnon)
    start_sampler native "$ws" "$aw"
    say "[rss] native: writing the transaction (subscription streaming)"
    t0=$EPOCHREALTIME
    src -c "$insert" || fail "the $rows-row transaction failed"
    [[ $(checksum source) == "$want" ]] || fail "the native transaction differs from the TREMpy one"
    wait_converged "$t0" "$rows" "$want"
    native_s=$CONVERGED_S
    stop_sampler
    ws_peak=$(sampled_max native "$ws")
    aw_peak=$(sampled_max native "$aw")
    say "[rss] native: applied ${native_s}s after the first insert; walsender RssAnon peak $(mib "$ws_peak") MiB, apply worker $(mib "$aw_peak") MiB"
    drop_native bench_sub_rss

    local label="1 txn of $rows rows" met
    case_check "$label"
    met=$(awk -v k="$a_hwm" -v r="$rows" 'BEGIN { if (k == "" || r < 1000000) print "null"; else print (k * 1024 < 200000000) ? "true" : "false" }')
    figure "$label" "peak RSS: applier (VmHWM)" MiB "$(mib "$a_hwm")" "native apply worker RssAnon" "$(mib "$aw_peak")" "< 200 MB on 1M rows" "$met" \
        "\"rows\":$rows,\"trempy_kb\":${a_hwm:-null},\"anchor_kb\":${aw_peak:-null},\"applier_rss_anon_peak_kb\":${a_anon:-null}"
    figure "$label" "peak RssAnon: task worker" MiB "$(mib "$w_peak")" "native walsender RssAnon" "$(mib "$ws_peak")" "" null \
        "\"rows\":$rows,\"trempy_kb\":${w_peak:-null},\"anchor_kb\":${ws_peak:-null},\"trempy_base_kb\":${w_base:-null},\"anchor_base_kb\":${ws_base:-null},\"logical_decoding_work_mem\":\"$DECODING_MEM\""
    detail "$label: TREMpy written in ${write_s}s, published ${publish_s}s after the first insert as $msgs messages, applied in ${drain_s}s by a fresh applier; native applied ${native_s}s after the first insert"
    detail "$label: applier RssAnon peak (sampled every 100 ms) $(mib "$a_anon") MiB (VmHWM also counts its mapped binary and libraries)"
    detail "$label: RssAnon before the transaction: task worker $(mib "$w_base") MiB, walsender $(mib "$ws_base") MiB, apply worker $(mib "$aw_base") MiB (logical_decoding_work_mem = $DECODING_MEM: decoding spills beyond it, in both)"
}

# ------------------------------------------------------------------ main

NPROC=$(nproc)
MEM_KB=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
PG_VERSION=$(src -At -c 'SHOW server_version')
RABBIT_VERSION=$(rabbitmqctl_ -q -s version 2>/dev/null | head -n1 || echo unknown)
OTP_VERSION=$(cat /usr/lib/erlang/releases/*/OTP_VERSION 2>/dev/null | head -n1 || echo unknown)
CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
DECODING_MEM=$(src -At -c 'SHOW logical_decoding_work_mem')
LOAD_START=$(loadavg)
BUSY_START=$(machine_busy)
GIT_REV=$(git -C "$REPO_ROOT" describe --always --dirty 2>/dev/null || echo unknown)
APPLIER_BUILT=$(date -u -r "$TREMPY_APPLIER_BIN" +%FT%TZ)
EXT_BUILT=$(date -u -r "$PG_PKGLIBDIR/trempy.so" +%FT%TZ 2>/dev/null || echo unknown)

src -c 'CREATE EXTENSION IF NOT EXISTS trempy' || fail "CREATE EXTENSION trempy failed on the source"
EXT_VERSION=$(src -At -c "SELECT extversion FROM pg_extension WHERE extname = 'trempy'")
say "cleaning up objects of an earlier run"
cleanup
other_slots=$(src -At -c "SELECT string_agg(slot_name, ', ' ORDER BY slot_name) FROM pg_replication_slots")

started=$SECONDS
t_started=$EPOCHREALTIME
for c in $CASES; do
    case $c in
        batch) run_case batch "$ROWS" 1000 ;;
        txns) run_case txns "$TXNS" 1 ;;
        load) run_load_case "$ROWS" ;;
        latency) run_latency ;;
        rss) run_rss ;;
    esac
done
say "dropping schema bench"
src -c 'DROP SCHEMA IF EXISTS bench CASCADE'
tgt -c 'DROP SCHEMA IF EXISTS bench CASCADE'
LOAD_END=$(loadavg)
busy_pct=$(awk -v a="$BUSY_START" -v b="$(machine_busy)" -v hz="$CLK_TCK" -v n="$NPROC" -v t="$(since "$t_started")" \
    'BEGIN { if (t > 0) printf "%.0f", (b - a) / hz / (t * n) * 100; else print "null" }')
printf '{"run_id":"%s","quick":%s,"case":"run","metric":"machine","cases":"%s","nproc":%s,"mem_kb":%s,"cpu":"%s","postgresql":"%s","rabbitmq":"%s","otp":"%s","trempy":"%s","tree":"%s","loadavg_start":"%s","loadavg_end":"%s","machine_busy_pct":%s,"seconds":%s,"disturbed_cases":%s}\n' \
    "$RUN_ID" "$([[ $QUICK == 1 ]] && echo true || echo false)" "$CASES" "$NPROC" "$MEM_KB" "$CPU_MODEL" "$PG_VERSION" "$RABBIT_VERSION" "$OTP_VERSION" \
    "$EXT_VERSION" "$GIT_REV" "$LOAD_START" "$LOAD_END" "$busy_pct" "$((SECONDS - started))" "$([[ $DISTURBED_ANY == 1 ]] && echo true || echo false)" >>"$RESULTS"

echo
echo "TREMpy benchmark  run $RUN_ID$([[ $QUICK == 1 ]] && echo '  (BENCH_QUICK=1: smoke run, numbers are not meaningful)')"
echo "machine:    $NPROC CPUs ($CPU_MODEL), RAM $((MEM_KB / 1024)) MiB, Linux $(uname -r)"
echo "versions:   PostgreSQL $PG_VERSION (source and target), RabbitMQ $RABBIT_VERSION (Erlang/OTP $OTP_VERSION), trempy $EXT_VERSION"
echo "build:      tree $GIT_REV; trempy.so installed $EXT_BUILT, trempy-applier built $APPLIER_BUILT"
echo "load:       load average $LOAD_START at start, $LOAD_END at end; the machine's CPUs were ${busy_pct}% busy during the run (all processes)"
echo "settings:   backlogs written with synchronous_commit=$SYNC_COMMIT; latency writer: pgbench, $CLIENTS connections, server-default synchronous_commit;"
echo "            trempy-applier ${APPLIER_ARGS[*]:-defaults}; logical_decoding_work_mem $DECODING_MEM; other slots on the source (each decodes all WAL): ${other_slots:-none}"
echo
{
    echo "case|metric|TREMpy|anchor|anchor value|ratio|issue target (info only)"
    for row in "${RESULT_ROWS[@]}"; do echo "$row"; done
} | awk -F'|' '
    { for (i = 1; i <= NF; i++) { cell[NR, i] = $i; if (length($i) > w[i]) w[i] = length($i) } n = NR }
    END {
        for (r = 1; r <= n; r++) {
            line = sprintf("%-" w[1] "s | %-" w[2] "s | %" w[3] "s | %-" w[4] "s | %" w[5] "s | %" w[6] "s | %-" w[7] "s", cell[r, 1], cell[r, 2], cell[r, 3], cell[r, 4], cell[r, 5], cell[r, 6], cell[r, 7])
            sep = line
            sub(/ +$/, "", line)
            print line
            if (r == 1) { gsub(/[^|]/, "-", sep); gsub(/\|/, "+", sep); print sep }
        }
    }'
echo
((DISTURBED_ANY == 0)) || echo "(!) = disturbed case: a server restarted or the writer stalled while it ran (see below); rerun it."
echo "ratio = TREMpy / anchor: above 1 is better for rows/s, below 1 is better for ms, CPU s and MiB."
echo "Catch-up anchors time from ALTER SUBSCRIPTION ENABLE; TREMpy decode+publish times from start_task (includes the worker"
echo "start), drain from starting trempy-applier; end-to-end from the first insert. Latency: target commit - source commit per"
echo "row. CPU: utime+stime per million changes, over the catch-up (batch, txns) or from the writer's start until the target"
echo "had every row (latency). RabbitMQ's beam.smp serves every queue of the stack (other users' too)."
for d in "${DETAILS[@]}"; do echo "  $d"; done
echo
echo "results appended to $RESULTS"
say "done in $((SECONDS - started))s"
