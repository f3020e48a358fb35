#!/usr/bin/env bash
# shellcheck disable=SC2016  # '...' snippets for `bash -c` take "$1" on purpose.
# TREMpy demo, run by `scripts/dev.sh demo` once the stack is up (it can also be run directly
# against a running stack).
#
# Loads sql/demo_schema.sql into the source and the target, (re)creates the task `demo` for
# shop."Customers" and shop.orders, starts trempy-applier in the background, makes a few changes
# on the source, waits until the target matches the source, and prints what happened. The stack
# and the applier are left running. Re-runnable: a previous demo task, its applier, its RabbitMQ
# queues, its watermark and the demo rows are removed first.
#
# Environment: DEMO_TIMEOUT (seconds to wait for the target to converge, default 60).
set -euo pipefail

# Reuse the stack helpers (paths, password, rabbitmqctl) without running a dev.sh command.
# shellcheck source=scripts/dev.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/dev.sh"

TASK=demo
TIMEOUT=${DEMO_TIMEOUT:-60}

say() { printf 'demo: %s\n' "$*" >&2; }
fail() {
    printf 'demo: ERROR: %s\n' "$*" >&2
    exit 1
}

use_running_stack

APPLIER_LOG=$TREMPY_STACK_DIR/applier-demo.log
APPLIER_PID_FILE=$TREMPY_STACK_DIR/applier-demo.pid
SCHEMA_FILE=$REPO_ROOT/sql/demo_schema.sql

SQL_APP=trempy-demo

# is_demo_applier PID: PID is a running `trempy-applier run --task demo`.
is_demo_applier() {
    [[ $1 =~ ^[0-9]+$ ]] && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qE -- "trempy-applier run --task $TASK( |$)"
}

# stop_previous_applier: stop the applier a previous demo run left running (by its recorded PID).
stop_previous_applier() {
    local pid
    [[ -f $APPLIER_PID_FILE ]] || return 0
    pid=$(<"$APPLIER_PID_FILE")
    if is_demo_applier "$pid"; then
        say "stopping the applier of the previous demo run (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        wait_until 20 "applier pid $pid to exit" bash -c '! kill -0 "$1" 2>/dev/null' _ "$pid" ||
            fail "the previous demo applier (pid $pid) did not stop"
    fi
    rm -f "$APPLIER_PID_FILE"
}

# delete_queues: remove the task's RabbitMQ queues (the next worker declares them afresh).
delete_queues() {
    local queues q
    queues=$(rabbitmqctl_ -q -s list_queues name 2>/dev/null) || fail "rabbitmqctl list_queues failed"
    for q in "trempy_queue_$TASK" "dlx_queue_$TASK"; do
        if grep -qxF "$q" <<<"$queues"; then
            run_quiet "rabbitmqctl delete_queue $q" rabbitmqctl_ -q delete_queue "$q" || fail "could not delete queue $q"
        fi
    done
}

# checksums DB: "<table> <count> <md5>" per demo table.
checksums() {
    sql_on "$1" -At -F ' ' <<'EOF'
SELECT 'shop."Customers"', count(*), coalesce(md5(string_agg(t::text, ',' ORDER BY id)), '-') FROM shop."Customers" t;
SELECT 'shop.orders', count(*), coalesce(md5(string_agg(t::text, ',' ORDER BY id)), '-') FROM shop.orders t;
EOF
}

started=$SECONDS

# ------------------------------------------------------------------ reset a previous run
stop_previous_applier
say "loading $SCHEMA_FILE into source and target"
src -c 'CREATE EXTENSION IF NOT EXISTS trempy' || fail "CREATE EXTENSION trempy failed on the source"
src -f "$SCHEMA_FILE" || fail "loading the demo schema into the source failed"
tgt -f "$SCHEMA_FILE" || fail "loading the demo schema into the target failed"

if [[ $(src -At -c "SELECT count(*) FROM trempy.tasks WHERE task_name = '$TASK'") != 0 ]]; then
    say "dropping the previous task '$TASK'"
    src -c "SELECT trempy.drop_task('$TASK')" >/dev/null || fail "trempy.drop_task('$TASK') failed"
fi
delete_queues
# Demo rows from an earlier run: gone on both sides, so that source and target start equal.
src -c 'TRUNCATE shop."Customers", shop.orders RESTART IDENTITY' || fail "TRUNCATE on the source failed"
tgt <<EOF || fail "resetting the target failed"
TRUNCATE shop."Customers", shop.orders RESTART IDENTITY;
DO \$\$ BEGIN
    IF to_regclass('trempy.applier_progress') IS NOT NULL THEN
        DELETE FROM trempy.applier_progress WHERE task_name = '$TASK';
    END IF;
END \$\$;
EOF

# ------------------------------------------------------------------ task + applier
say "creating task '$TASK' for shop.\"Customers\" and shop.orders"
src -c "SELECT trempy.create_task('$TASK', '{
    \"task\": {\"task_name\": \"$TASK\", \"replication_type\": \"cdc\", \"cdc_settings\": {\"mode\": \"upsert\"}},
    \"tables\": [{\"schema_name\": \"shop\", \"table_name\": \"Customers\", \"priority\": 0},
               {\"schema_name\": \"shop\", \"table_name\": \"orders\", \"priority\": 0}]}')" >/dev/null ||
    fail "trempy.create_task('$TASK') failed"

task_running() { [[ $(src -At -c "SELECT state FROM trempy.status() WHERE task_name = '$TASK'") == running ]]; }
if ! wait_until 60 "task '$TASK' to be running" task_running; then
    src -c "SELECT task_name, state, worker_pid, last_error FROM trempy.status() WHERE task_name = '$TASK'" >&2 || true
    fail "task '$TASK' did not reach state 'running'"
fi
say "task '$TASK' is running"

say "starting trempy-applier in the background (log: $APPLIER_LOG)"
# setsid: the applier outlives this script and a Ctrl-C in its terminal.
NO_COLOR=1 setsid "$TREMPY_APPLIER_BIN" run --task "$TASK" >"$APPLIER_LOG" 2>&1 </dev/null &
APPLIER_PID=$!
printf '%s\n' "$APPLIER_PID" >"$APPLIER_PID_FILE"
sleep 0.5
is_demo_applier "$APPLIER_PID" || {
    tail -n 20 "$APPLIER_LOG" | sed 's/^/    /' >&2
    fail "trempy-applier exited right away; see $APPLIER_LOG"
}

# ------------------------------------------------------------------ changes on the source
say "making changes on the source"
src <<'EOF' || fail "the demo changes failed on the source"
-- inserts, one with quotes, a backslash, unicode and a newline in the name
INSERT INTO shop."Customers" (id, name, email) VALUES
    (1, 'Alice Martin', 'alice@example.com'),
    (2, E'Zoë O''Brien "the \\ great" — 東京 🚀\nsecond line', 'zoe@example.com'),
    (3, 'Carlos Pérez', 'carlos@example.com'),
    (4, 'To Be Deleted', NULL);
INSERT INTO shop.orders (customer_id, amount, status, note) VALUES
    (1, 19.99, 'new', 'first order'),
    (2, 5.00, 'new', E'tab\there'),
    (3, 120.50, 'new', NULL);
-- an update
UPDATE shop."Customers" SET email = 'alice.martin@example.com' WHERE id = 1;
UPDATE shop.orders SET status = 'paid' WHERE customer_id = 1;
-- a primary-key update (the applier deletes the old key and upserts the new row)
UPDATE shop."Customers" SET id = 30 WHERE id = 3;
UPDATE shop.orders SET customer_id = 30 WHERE customer_id = 3;
-- deletes
DELETE FROM shop."Customers" WHERE id = 4;
DELETE FROM shop.orders WHERE id = 2;
-- a rolled-back transaction: never reaches the target
BEGIN;
INSERT INTO shop."Customers" (id, name) VALUES (99, 'never committed');
DELETE FROM shop.orders;
ROLLBACK;
-- one 10,000-row transaction
INSERT INTO shop.orders (customer_id, amount, status, note)
SELECT 1 + g % 2, round((g % 1000) / 7.0, 2), (ARRAY['new', 'paid', 'shipped'])[1 + g % 3], 'bulk order #' || g
  FROM generate_series(1, 10000) AS g;
EOF

# ------------------------------------------------------------------ convergence
say "waiting up to ${TIMEOUT}s for the target to match the source"
converge_started=$SECONDS
converged=0
deadline=$((SECONDS + TIMEOUT))
while ((SECONDS < deadline)); do
    source_sums=$(checksums source) || fail "checksum query on the source failed"
    target_sums=$(checksums target) || target_sums=
    if [[ $source_sums == "$target_sums" ]]; then
        converged=1
        break
    fi
    is_demo_applier "$APPLIER_PID" || {
        tail -n 20 "$APPLIER_LOG" | sed 's/^/    /' >&2
        fail "trempy-applier (pid $APPLIER_PID) exited; see $APPLIER_LOG"
    }
    sleep 0.5
done

echo
echo "== trempy.status() (source)"
src -c "SELECT task_name, state, lag_bytes, changes_published, transactions_published, messages_published, last_error
          FROM trempy.status() WHERE task_name = '$TASK'"
echo "== trempy.applier_progress (target)"
tgt -c "SELECT task_name, commit_lsn, transactions_applied, changes_applied, applied_at
          FROM trempy.applier_progress WHERE task_name = '$TASK'" 2>/dev/null || echo "(no applier_progress table yet)"
echo "== target rows of shop.\"Customers\""
tgt -c 'SELECT id, name, email, created_at FROM shop."Customers" ORDER BY id'
echo "== source vs target (count, md5 of the rows ordered by id)"
target_sums=$(checksums target) || target_sums=
paste -d' ' <(printf '%s\n' "$source_sums") <(printf '%s\n' "$target_sums") |
    awk 'BEGIN { printf "%-17s %10s %10s  %-32s  %-32s  %s\n", "table", "source", "target", "source md5", "target md5", "match" }
         { printf "%-17s %10s %10s  %-32s  %-32s  %s\n", $1, $2, $5, $3, $6, ($2 == $5 && $3 == $6) ? "yes" : "NO" }'
echo

if ((!converged)); then
    echo "== last lines of $APPLIER_LOG" >&2
    tail -n 20 "$APPLIER_LOG" | sed 's/^/    /' >&2
    fail "the target did not converge within ${TIMEOUT}s (the applier, pid $APPLIER_PID, is still running)"
fi

echo "The target matches the source (converged $((SECONDS - converge_started))s after the changes; demo took $((SECONDS - started))s)."
echo "Left running:"
printf '  %-50s %s\n' \
    "trempy-applier, pid $APPLIER_PID" "log: $APPLIER_LOG" \
    "task '$TASK' on the source" "try: scripts/dev.sh psql-source -c \"INSERT INTO shop.\\\"Customers\\\" (id, name) VALUES (5, 'Eve')\""
echo "To stop:"
printf '  %-70s %s\n' \
    "kill $APPLIER_PID" "# the applier (SIGTERM)" \
    "scripts/dev.sh psql-source -c \"SELECT trempy.drop_task('$TASK')\"" "# the task (slot + publication)" \
    "scripts/dev.sh stack-down" "# the whole stack"
