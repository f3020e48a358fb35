#!/usr/bin/env bash
# shellcheck disable=SC2016  # '...' snippets for `bash -c` take "$1" on purpose.
# TREMpy CDC catch-up benchmark, run by `scripts/dev.sh bench` once the stack is up (it can also
# be run directly against a running stack).
#
# Two backlogs of inserts into bench.t(id bigint primary key, a int, b text, c timestamptz,
# d numeric(12,2)), each measured for TREMpy and for an anchor in the same run:
#   (a) batch: BENCH_ROWS rows (default 1,000,000) in 1000-row transactions
#   (b) txns:  BENCH_TXNS one-row transactions (default 100,000)
# Per backlog:
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
#                    FROM STDIN (binary) between the two databases.
# Results: one table on stdout; one JSON line per row appended to <state dir>/bench-results.jsonl.
# Thresholds never fail the run; it fails only on errors (e.g. no convergence within BENCH_TIMEOUT).
#
# Environment:
#   BENCH_ROWS, BENCH_TXNS   backlog sizes (defaults 1000000 / 100000; 20000 / 5000 with BENCH_QUICK=1)
#   BENCH_QUICK=1            small defaults, for a smoke run
#   BENCH_CASES              which backlogs to run (default "batch txns")
#   BENCH_TIMEOUT            seconds allowed for each wait (default 1800)
#   BENCH_SYNC_COMMIT        synchronous_commit of the session writing the backlog (default off:
#                            100k fsyncs would dominate; the backlog itself is identical)
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
else
    ROWS=${BENCH_ROWS:-1000000}
    TXNS=${BENCH_TXNS:-100000}
fi
CASES=${BENCH_CASES:-batch txns}
TIMEOUT=${BENCH_TIMEOUT:-1800}
SYNC_COMMIT=${BENCH_SYNC_COMMIT:-off}
read -r -a APPLIER_ARGS <<<"${BENCH_APPLIER_ARGS:-}"
[[ $ROWS =~ ^[1-9][0-9]*$ && $TXNS =~ ^[1-9][0-9]*$ ]] || fail "BENCH_ROWS and BENCH_TXNS must be positive integers"
[[ $TIMEOUT =~ ^[1-9][0-9]*$ ]] || fail "BENCH_TIMEOUT must be a positive integer"
for c in $CASES; do [[ $c == batch || $c == txns ]] || fail "BENCH_CASES: unknown case '$c' (batch, txns)"; done

RESULTS=$TREMPY_STACK_DIR/bench-results.jsonl
RUN_ID=$(date -u +%Y%m%dT%H%M%SZ)
# Everything this script creates, by exact name (never another task's or engineer's objects).
BENCH_TASKS=(bench_batch bench_txns bench_batch_e2e bench_txns_e2e)
BENCH_SUBS=(bench_sub_batch bench_sub_txns bench_sub_batch_e2e bench_sub_txns_e2e)

# ------------------------------------------------------------------ helpers

SQL_APP=trempy-bench

# since T0: seconds elapsed since T0 (an $EPOCHREALTIME value), 3 decimals.
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'; }
# rate ROWS SECONDS: rows per second, rounded.
rate() { awk -v r="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.0f", r / s; else print "null" }'; }
# ratio A B: A / B, 2 decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0 && a != "null") printf "%.2f", a / b; else print "null" }'; }

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

APPLIER_PID=
start_applier() {
    local task=$1 log=$TREMPY_STACK_DIR/applier-$1.log
    NO_COLOR=1 "$TREMPY_APPLIER_BIN" run --task "$task" "${APPLIER_ARGS[@]}" >"$log" 2>&1 </dev/null &
    APPLIER_PID=$!
    APPLIER_LOG=$log
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

cleanup() {
    local task sub
    stop_applier
    for task in "${BENCH_TASKS[@]}"; do drop_trempy_task "$task"; done
    for sub in "${BENCH_SUBS[@]}"; do drop_native "$sub"; done
}

on_exit() {
    local rc=$?
    trap - EXIT
    if ((rc != 0)); then
        say "failed; cleaning up bench objects"
        (cleanup) || say "cleanup failed; rerun the benchmark to clean up"
    fi
    exit "$rc"
}
trap on_exit EXIT

# recreate_tables: bench.t on both sides (empty), bench.t2 on the target for the COPY anchor.
recreate_tables() {
    local ddl='CREATE SCHEMA IF NOT EXISTS bench;
DROP TABLE IF EXISTS bench.t;
CREATE TABLE bench.t (id bigint PRIMARY KEY, a int, b text, c timestamptz, d numeric(12,2));'
    src -c "$ddl" || fail "could not create bench.t on the source"
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

RESULT_ROWS=()
# result CASE METRIC ROWS TREMPY_S ANCHOR ANCHOR_S [EXTRA_JSON]: record one table row + JSON line.
result() {
    local case=$1 metric=$2 rows=$3 ts=$4 anchor=$5 as=$6 extra=${7:-}
    local tr ar
    tr=$(rate "$rows" "$ts")
    ar=$(rate "$rows" "$as")
    RESULT_ROWS+=("$case|$metric|$tr|$anchor|$ar|$(ratio "$tr" "$ar")")
    printf '{"run_id":"%s","quick":%s,"case":"%s","metric":"%s","rows":%s,"trempy_s":%s,"trempy_rows_per_s":%s,"anchor":"%s","anchor_s":%s,"anchor_rows_per_s":%s,"ratio":%s,"nproc":%s,"mem_kb":%s,"postgresql":"%s","rabbitmq":"%s"%s}\n' \
        "$RUN_ID" "$([[ $QUICK == 1 ]] && echo true || echo false)" "$case" "$metric" "$rows" "$ts" "$tr" "$anchor" "$as" "$ar" \
        "$(ratio "$tr" "$ar")" "$NPROC" "$MEM_KB" "$PG_VERSION" "$RABBIT_VERSION" "${extra:+,$extra}" >>"$RESULTS"
}

DETAILS=()
detail() { DETAILS+=("$*"); }

# ------------------------------------------------------------------ one backlog

# run_case NAME ROWS ROWS_PER_TXN
run_case() {
    local name=$1 rows=$2 step=$3 txns task sub t0 want
    local slot_before slot_moves startup_s build_s publish_s drain_s e2e_s native_s native_build_s native_e2e_s native_e2e_build_s e2e_build_s copy_s
    local msgs queue_msgs progress
    txns=$(((rows + step - 1) / step))
    task=bench_$name
    sub=bench_sub_$name
    say "== case $name: $rows rows in $txns transactions of $step row(s)"

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
    t0=$EPOCHREALTIME
    src -c "SELECT trempy.start_task('$task')" >/dev/null
    wait_state "$task" running
    startup_s=$(since "$t0")
    wait_published "$task" "$rows" "$txns"
    publish_s=$(since "$t0")
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
    t0=$EPOCHREALTIME
    start_applier "$task"
    wait_converged "$t0" "$rows" "$want"
    drain_s=$CONVERGED_S
    progress=$(tgt -At -F ' ' -c "SELECT transactions_applied, changes_applied FROM trempy.applier_progress WHERE task_name = '$task'")
    stop_applier
    say "[$name] TREMpy: drained in ${drain_s}s (applier_progress transactions, changes: $progress)"
    drop_trempy_task "$task"

    # --- native catch-up: disabled subscription with its slot, backlog, ENABLE.
    recreate_tables
    create_subscription "$sub" false
    say "[$name] native: building the backlog (subscription disabled, slot created)"
    t0=$EPOCHREALTIME
    build_backlog "$rows" "$step"
    native_build_s=$(since "$t0")
    [[ $(checksum source) == "$want" ]] || fail "the native backlog differs from the TREMpy one"
    say "[$name] native: backlog built in ${native_build_s}s; ENABLE, waiting for the target"
    t0=$EPOCHREALTIME
    tgt -c "ALTER SUBSCRIPTION $sub ENABLE"
    wait_converged "$t0" "$rows" "$want"
    native_s=$CONVERGED_S
    say "[$name] native: caught up in ${native_s}s"
    drop_native "$sub"

    # --- TREMpy end-to-end: task + applier running while the backlog is written.
    recreate_tables
    create_task "${task}_e2e"
    start_applier "${task}_e2e"
    wait_until 30 "the applier to connect" grep -q 'applier connected' "$APPLIER_LOG" || fail "the applier did not connect; see $APPLIER_LOG"
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
    local common="\"txns\":$txns,\"rows_per_txn\":$step,\"sync_commit\":\"$SYNC_COMMIT\""
    result "$label" "apply drain (queue -> target)" "$rows" "$drain_s" "native sub catch-up" "$native_s" \
        "$common,\"messages_published\":${msgs%% *},\"queue_messages\":$queue_msgs"
    result "$label" "decode+publish (slot -> RabbitMQ)" "$rows" "$publish_s" "native sub catch-up" "$native_s" \
        "$common,\"worker_start_s\":$startup_s"
    result "$label" "catch-up total (publish + drain)" "$rows" "$(awk -v a="$publish_s" -v b="$drain_s" 'BEGIN { printf "%.3f", a + b }')" \
        "native sub catch-up" "$native_s" "$common"
    result "$label" "end-to-end (applier live)" "$rows" "$e2e_s" "native end-to-end" "$native_e2e_s" \
        "$common,\"trempy_build_s\":$e2e_build_s,\"native_build_s\":$native_e2e_build_s"

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
    fi

    detail "$label: backlog write ${build_s}s (native ${native_build_s}s); TREMpy decode+publish ${publish_s}s (of which worker start ${startup_s}s), drain ${drain_s}s; native catch-up ${native_s}s"
    detail "$label: during decode+publish the slot's restart_lsn moved ${slot_moves%|*}, its confirmed_flush_lsn ${slot_moves#*|} (every decoding call starts at restart_lsn)"
    detail "$label: messages_published ${msgs%% *} (lag_bytes after publish ${msgs##* }), RabbitMQ queue depth before the applier $queue_msgs, rows/message $(awk -v r="$rows" -v m="${msgs%% *}" 'BEGIN { if (m > 0) printf "%.0f", r / m; else print "-" }'), applier_progress (txns, changes) $progress"
    detail "$label: end-to-end TREMpy ${e2e_s}s (backlog written in ${e2e_build_s}s), native ${native_e2e_s}s (written in ${native_e2e_build_s}s)${copy_s:+; COPY pipe ${copy_s}s}"
}

# ------------------------------------------------------------------ main

NPROC=$(nproc)
MEM_KB=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
PG_VERSION=$(src -At -c 'SHOW server_version')
RABBIT_VERSION=$(rabbitmqctl_ -q -s version 2>/dev/null | head -n1 || echo unknown)
CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)

src -c 'CREATE EXTENSION IF NOT EXISTS trempy' || fail "CREATE EXTENSION trempy failed on the source"
say "cleaning up objects of an earlier run"
cleanup
other_slots=$(src -At -c "SELECT string_agg(slot_name, ', ' ORDER BY slot_name) FROM pg_replication_slots")

started=$SECONDS
for c in $CASES; do
    case $c in
        batch) run_case batch "$ROWS" 1000 ;;
        txns) run_case txns "$TXNS" 1 ;;
    esac
done
say "dropping bench.t"
src -c 'DROP SCHEMA IF EXISTS bench CASCADE'
tgt -c 'DROP SCHEMA IF EXISTS bench CASCADE'

echo
echo "TREMpy CDC catch-up benchmark  run $RUN_ID$([[ $QUICK == 1 ]] && echo '  (BENCH_QUICK=1: smoke run, numbers are not meaningful)')"
echo "machine:    $NPROC CPUs ($CPU_MODEL), RAM $((MEM_KB / 1024)) MiB"
echo "versions:   PostgreSQL $PG_VERSION (source and target), RabbitMQ $RABBIT_VERSION"
echo "settings:   backlog written with synchronous_commit=$SYNC_COMMIT; trempy-applier ${APPLIER_ARGS[*]:-defaults}; other slots on the source (each decodes all WAL): ${other_slots:-none}"
echo
{
    echo "case|metric|TREMpy rows/s|anchor|anchor rows/s|ratio"
    for row in "${RESULT_ROWS[@]}"; do echo "$row"; done
} | awk -F'|' '
    { for (i = 1; i <= NF; i++) { cell[NR, i] = $i; if (length($i) > w[i]) w[i] = length($i) } n = NR }
    END {
        for (r = 1; r <= n; r++) {
            line = sprintf("%-" w[1] "s | %-" w[2] "s | %" w[3] "s | %-" w[4] "s | %" w[5] "s | %" w[6] "s", cell[r, 1], cell[r, 2], cell[r, 3], cell[r, 4], cell[r, 5], cell[r, 6])
            print line
            if (r == 1) { gsub(/[^|]/, "-", line); gsub(/\|/, "+", line); print line }
        }
    }'
echo
echo "ratio = TREMpy rows/s / anchor rows/s. Catch-up anchors time from ALTER SUBSCRIPTION ENABLE; TREMpy decode+publish"
echo "times from start_task (includes the worker start), drain from starting trempy-applier; end-to-end from the first insert."
for d in "${DETAILS[@]}"; do echo "  $d"; done
echo
echo "results appended to $RESULTS"
say "done in $((SECONDS - started))s"
