#!/usr/bin/env bash
# shellcheck disable=SC2016,SC2015  # '...' snippets for `bash -c` take "$1" on purpose; A && B || die is intended.
# TREMpy local development stack.
#
#   scripts/dev.sh <command> [args...]
#
# Commands:
#   deps                         install missing apt packages, cargo-pgrx 0.18.1, `cargo pgrx init`
#   build                        build + install the `trempy` extension, build `trempy-applier`
#   stack-up                     deps + build (skipped with TREMPY_SKIP_BUILD=1), then start the
#                                SOURCE/TARGET PostgreSQL 15 clusters and a private RabbitMQ node
#                                and write .stack/env
#   stack-down                   stop everything, remove the state dir and .stack/
#   stack-status                 show what is running
#   source-stop [fast|immediate]   source-start   source-restart [fast|immediate]
#   target-stop [fast|immediate]   target-start   target-restart [fast|immediate]
#   rabbit-stop                  rabbit-start     rabbit-restart
#   rabbitmqctl [args]           rabbitmqctl against the stack's node (e.g. list_queues)
#   psql-source [psql args]      psql-target [psql args]   (unix socket, as the postgres OS user)
#   demo                         stack-up, then a live demo (crate demo/, trempy-demo): task `demo` on
#                                the tables of sql/demo_schema.sql, applier left running in the background
#   bench [flags]                stack-up, then the benchmarks next to their anchors (crate bench/:
#                                CDC catch-up vs native logical replication, commit-to-apply latency,
#                                CPU per million changes, peak RSS, COPY pipe; see docs/benchmarks.md)
#   test                         stack-up, unit tests, then every end-to-end test (the fault
#                                suite in its short version: each fault once), then a smoke run
#                                of the benchmark
#   regress                      the extension's SQL tests (extension/regress, pg_regress) in the
#                                source database; `test` runs them too
#   fuzz [seconds]               every fuzz target for that long each (default 15; `test` runs it
#                                too), starting from fuzz/seeds/<target> (the parsers' goldens)
#   faults [rounds] [seed]       stack-up, then the long fault-injection suite (default 5 rounds
#                                of every fault, seed 20261122) with its recovery-time table
#
# Environment:
#   TREMPY_STACK_DIR        state dir (default /tmp/trempy-stack-<cksum of the repo path>)
#   TREMPY_STACK_PORT_BASE  first port of the 5-port block (default derived from the repo path)
#   TREMPY_SKIP_BUILD=1     stack-up skips deps and build
#   CARGO_TARGET_DIR        build cache (default $HOME/.cache/trempy/target)
#
# Port layout (base = 20000 + (cksum(repo path) mod 400) * 20):
#   base+0 source PostgreSQL, base+1 target PostgreSQL, base+2 AMQP,
#   base+3 Erlang distribution, base+4 private epmd, base+5 the source's standby (tests only)
#
# Secrets: the generated passwords live in <state>/password (PostgreSQL role trempy, RabbitMQ
# administrator trempy), <state>/amqp-source-password (RabbitMQ user trempy_source, read by the
# source cluster through trempy.amqp_password_file) and <state>/amqp-applier-password (RabbitMQ
# user trempy_applier), all 0600, and in .stack/env (0600); they are never printed.
set -euo pipefail

# ----------------------------------------------------------------------------- constants

SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
REPO_ROOT=$(cd "$(dirname "$SCRIPT_PATH")/.." && pwd -P)
PG_BIN=/usr/lib/postgresql/15/bin
PG_CONFIG=$PG_BIN/pg_config
PG_PKGLIBDIR=/usr/lib/postgresql/15/lib
RABBIT_BIN=/usr/lib/rabbitmq/bin
PGRX_VERSION=0.18.1
CARGO_FUZZ_VERSION=0.13.2
APT_PACKAGES=(postgresql-15 postgresql-server-dev-15 postgresql-contrib libclang-dev clang
    pkg-config sudo rabbitmq-server make procps)
ENV_DIR=$REPO_ROOT/.stack
ENV_FILE=$ENV_DIR/env
PATH_HASH=$(printf '%s' "$REPO_ROOT" | cksum | cut -d' ' -f1)
STACK_MARKER=.trempy-stack
START_TIMEOUT=120
CLUSTERS=(source target)

# ----------------------------------------------------------------------------- generic helpers

log() { printf 'dev.sh: %s\n' "$*" >&2; }
warn() { printf 'dev.sh: WARNING: %s\n' "$*" >&2; }
die() {
    printf 'dev.sh: ERROR: %s\n' "$*" >&2
    exit 1
}

require_root() {
    [[ $EUID -eq 0 ]] || die "this command must run as root (it uses runuser/apt and writes system dirs)"
}

# run_quiet DESC CMD...: run CMD, show its output (stderr) only if it fails.
run_quiet() {
    local desc=$1 out rc=0
    shift
    out=$(mktemp)
    "$@" >"$out" 2>&1 || rc=$?
    if ((rc != 0)); then
        printf 'dev.sh: ERROR: %s failed (exit %d):\n' "$desc" "$rc" >&2
        sed 's/^/    /' "$out" >&2
    fi
    rm -f "$out"
    return "$rc"
}

# wait_until TIMEOUT_S DESC CMD...: poll CMD every 0.25 s until it succeeds.
wait_until() {
    local timeout=$1 desc=$2 deadline
    shift 2
    deadline=$((SECONDS + timeout))
    until "$@"; do
        ((SECONDS < deadline)) || {
            log "timed out after ${timeout}s waiting for $desc"
            return 1
        }
        sleep 0.25
    done
}

# port_open PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

# listening_pids PORT: PIDs of processes with a TCP socket listening on PORT (v4 or v6).
listening_pids() {
    local port_hex local_addr st inode inodes=()
    port_hex=$(printf '%04X' "$1")
    while read -r _ local_addr _ st _ _ _ _ _ inode _; do
        [[ $st == 0A && ${local_addr##*:} == "$port_hex" ]] && inodes+=("$inode")
    done < <(cat /proc/net/tcp /proc/net/tcp6 2>/dev/null)
    for inode in "${inodes[@]}"; do
        # find exits 1 when a process vanishes during the scan: not an error here.
        { find /proc/[0-9]*/fd -maxdepth 1 -lname "socket:\[$inode\]" 2>/dev/null || true; } | cut -d/ -f3
    done | sort -un
}

# describe_port PORT: "pid 123 (epmd), ..." for error messages.
describe_port() {
    local pid out=()
    for pid in $(listening_pids "$1"); do
        out+=("pid $pid ($(cat "/proc/$pid/comm" 2>/dev/null || echo '?'))")
    done
    ((${#out[@]})) && (IFS=,; printf '%s' "${out[*]}") || printf 'unknown process'
}

# require_port_free PORT WHAT: fail clearly if a foreign process already uses PORT.
require_port_free() {
    if port_open "$1"; then
        die "port $1 ($2) is already in use by $(describe_port "$1"), which is not part of this stack." \
            "Stop it, or choose another block with TREMPY_STACK_PORT_BASE=<port> (after stack-down)."
    fi
}

# as_postgres CMD...: run CMD as the postgres OS user from a directory it can enter.
as_postgres() {
    (cd / && runuser -u postgres -- "$@")
}

# write_secret_file PATH OWNER: write stdin to PATH with mode 0600 (never via argv).
write_secret_file() {
    local tmp
    tmp=$(umask 077 && mktemp "$1.XXXXXX")
    cat >"$tmp"
    chown "$2:$2" "$tmp"
    chmod 600 "$tmp"
    mv -f "$tmp" "$1"
}

target_dir() { printf '%s' "${CARGO_TARGET_DIR:-$HOME/.cache/trempy/target}"; }

# ----------------------------------------------------------------------------- stack layout

# env_file_value NAME: value of an exported variable in .stack/env (empty if absent).
env_file_value() {
    [[ -f $ENV_FILE ]] || return 0
    (
        set +u
        # shellcheck disable=SC1090
        . "$ENV_FILE" >/dev/null 2>&1
        printf '%s' "${!1:-}"
    )
}

# init_layout: compute every path/port of the stack (no side effects).
init_layout() {
    local dir=${TREMPY_STACK_DIR:-}
    [[ -n $dir ]] || dir=$(env_file_value TREMPY_STACK_DIR)
    [[ -n $dir ]] || dir=/tmp/trempy-stack-$PATH_HASH
    STACK_DIR=$(realpath -m -- "$dir")
    [[ $STACK_DIR != / && $STACK_DIR != "$REPO_ROOT" && $STACK_DIR != "$REPO_ROOT"/* ]] ||
        die "TREMPY_STACK_DIR=$STACK_DIR is not acceptable (must not be / or inside the repo)"

    local saved_base=
    [[ -f $STACK_DIR/port_base ]] && saved_base=$(<"$STACK_DIR/port_base")
    PORT_BASE=${TREMPY_STACK_PORT_BASE:-${saved_base:-$((20000 + (PATH_HASH % 400) * 20))}}
    [[ $PORT_BASE =~ ^[0-9]+$ ]] && ((PORT_BASE >= 1024 && PORT_BASE <= 65530)) ||
        die "TREMPY_STACK_PORT_BASE must be an integer in 1024..65530 (got '$PORT_BASE')"
    if [[ -n $saved_base && $saved_base != "$PORT_BASE" ]] && stack_anything_running; then
        die "the stack in $STACK_DIR is running with port base $saved_base; run stack-down before changing TREMPY_STACK_PORT_BASE"
    fi

    declare -gA PG_PORT=([source]=$PORT_BASE [target]=$((PORT_BASE + 1)) [standby]=$((PORT_BASE + 5)))
    declare -gA PG_DATA=([source]=$STACK_DIR/source [target]=$STACK_DIR/target [standby]=$STACK_DIR/standby)
    declare -gA PG_LOG=([source]=$STACK_DIR/source.log [target]=$STACK_DIR/target.log [standby]=$STACK_DIR/standby.log)
    AMQP_PORT=$((PORT_BASE + 2))
    DIST_PORT=$((PORT_BASE + 3))
    EPMD_PORT=$((PORT_BASE + 4))
    SOCKET_DIR=$STACK_DIR/run
    PASSWORD_FILE=$STACK_DIR/password
    # RabbitMQ passwords of the decoding workers (read by the source cluster: owned by postgres)
    # and of the applier; each user has only the permissions its side needs (rabbit_bootstrap).
    SOURCE_AMQP_PASSWORD_FILE=$STACK_DIR/amqp-source-password
    APPLIER_AMQP_PASSWORD_FILE=$STACK_DIR/amqp-applier-password
    RABBIT_DIR=$STACK_DIR/rabbitmq
    RABBIT_NODE=trempy$PATH_HASH@localhost
    RABBIT_PID_FILE=$RABBIT_DIR/rabbitmq.pid
}

stack_anything_running() {
    local f pid
    for f in "$STACK_DIR"/source/postmaster.pid "$STACK_DIR"/target/postmaster.pid "$STACK_DIR"/rabbitmq/rabbitmq.pid; do
        [[ -f $f ]] && pid=$(head -n1 "$f") && [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && return 0
    done
    return 1
}

stack_exists() { [[ -f $STACK_DIR/$STACK_MARKER ]]; }

require_stack() {
    require_root
    init_layout
    stack_exists || die "no stack in $STACK_DIR; run 'scripts/dev.sh stack-up' first"
}

# prepare_state_dir: create the state dir skeleton and persist the port base.
prepare_state_dir() {
    if [[ -e $STACK_DIR && ! -f $STACK_DIR/$STACK_MARKER ]] && [[ -n $(ls -A "$STACK_DIR") ]]; then
        die "$STACK_DIR exists, is not empty and is not a TREMpy stack dir; refusing to use it"
    fi
    install -d -m 755 "$STACK_DIR"
    as_postgres test -x "$STACK_DIR" ||
        die "the postgres user cannot traverse $STACK_DIR (a parent dir is not world-executable); set TREMPY_STACK_DIR"
    touch "$STACK_DIR/$STACK_MARKER"
    printf '%s\n' "$PORT_BASE" >"$STACK_DIR/port_base"
    install -d -m 755 -o postgres -g postgres "$SOCKET_DIR"
    [[ -s $PASSWORD_FILE ]] || new_secret | write_secret_file "$PASSWORD_FILE" root
    [[ -s $SOURCE_AMQP_PASSWORD_FILE ]] || new_secret | write_secret_file "$SOURCE_AMQP_PASSWORD_FILE" postgres
    [[ -s $APPLIER_AMQP_PASSWORD_FILE ]] || new_secret | write_secret_file "$APPLIER_AMQP_PASSWORD_FILE" root
}

new_secret() { od -An -tx1 -N16 /dev/urandom | tr -d ' \n'; }

password() { <"$PASSWORD_FILE" tr -d '\n'; }

# ----------------------------------------------------------------------------- PostgreSQL

pg_ctl_() {
    local cluster=$1
    shift
    as_postgres "$PG_BIN/pg_ctl" -D "${PG_DATA[$cluster]}" "$@"
}

pg_initialized() { [[ -f ${PG_DATA[$1]}/PG_VERSION ]]; }

pg_running() { pg_initialized "$1" && pg_ctl_ "$1" status >/dev/null 2>&1; }

pg_ready() { "$PG_BIN/pg_isready" -q -h "$SOCKET_DIR" -p "${PG_PORT[$1]}" -t 2; }

pg_pid() { head -n1 "${PG_DATA[$1]}/postmaster.pid" 2>/dev/null || true; }

pg_check_mode() {
    [[ $1 == smart || $1 == fast || $1 == immediate ]] || die "shutdown mode must be fast|immediate|smart (got '$1')"
}

pg_initdb() {
    local cluster=$1 data=${PG_DATA[$1]}
    pg_initialized "$cluster" && return 0
    log "initdb $cluster cluster in $data"
    install -d -m 700 -o postgres -g postgres "$data"
    run_quiet "initdb ($cluster)" as_postgres "$PG_BIN/initdb" -D "$data" -U postgres \
        -E UTF8 --locale=C.UTF-8 --auth-local=peer --auth-host=reject
}

# pg_settings CLUSTER: the stack-managed settings (included from postgresql.conf).
pg_settings() {
    local cluster=$1
    cat <<EOF
# Managed by scripts/dev.sh (rewritten at every start). Use ALTER SYSTEM for local overrides.
listen_addresses = '127.0.0.1'
port = ${PG_PORT[$cluster]}
unix_socket_directories = '$SOCKET_DIR'
password_encryption = 'scram-sha-256'
logging_collector = off
EOF
    case $cluster in
        source | standby)
            cat <<EOF
wal_level = logical
max_replication_slots = 32
max_wal_senders = 32
max_worker_processes = 48
track_commit_timestamp = on
max_slot_wal_keep_size = '4GB'
fsync = on
trempy.databases = 'source'
trempy.amqp_url = 'amqp://trempy_source@127.0.0.1:$AMQP_PORT/%2f'
trempy.amqp_password_file = '$SOURCE_AMQP_PASSWORD_FILE'
EOF
            if [[ -f $PG_PKGLIBDIR/trempy.so ]]; then
                echo "shared_preload_libraries = 'trempy'"
            else
                warn "$PG_PKGLIBDIR/trempy.so is not installed: source cluster starts WITHOUT shared_preload_libraries='trempy'"
            fi
            ;;
        target)
            echo "max_connections = 200"
            ;;
    esac
}

pg_write_config() {
    local cluster=$1 data=${PG_DATA[$1]}
    pg_settings "$cluster" | write_secret_file "$data/trempy-stack.conf" postgres
    grep -qxF "include 'trempy-stack.conf'" "$data/postgresql.conf" ||
        printf "\n# TREMpy dev stack settings\ninclude 'trempy-stack.conf'\n" >>"$data/postgresql.conf"
    write_secret_file "$data/pg_hba.conf" postgres <<'EOF'
# Managed by scripts/dev.sh: peer for the postgres OS user on the socket, scram on TCP.
# TYPE  DATABASE     USER      ADDRESS        METHOD
local   all          postgres                 peer
local   replication  postgres                 peer
local   all          all                      scram-sha-256
local   replication  all                      scram-sha-256
host    all          all       127.0.0.1/32   scram-sha-256
host    replication  all       127.0.0.1/32   scram-sha-256
EOF
}

# pg_check_ports CLUSTER: unless our cluster is running, its port must be free.
pg_check_ports() {
    pg_running "$1" || require_port_free "${PG_PORT[$1]}" "$1 PostgreSQL"
}

pg_start() {
    local cluster=$1
    pg_initialized "$cluster" || die "$cluster cluster is not initialized; run stack-up"
    if pg_running "$cluster"; then
        wait_until "$START_TIMEOUT" "$cluster PostgreSQL to accept connections" pg_ready "$cluster" ||
            die "$cluster PostgreSQL (pid $(pg_pid "$cluster")) is running but not accepting connections; see ${PG_LOG[$cluster]}"
        return 0
    fi
    pg_check_ports "$cluster"
    pg_write_config "$cluster"
    [[ -f ${PG_LOG[$cluster]} ]] || install -m 640 -o postgres -g postgres /dev/null "${PG_LOG[$cluster]}"
    log "starting $cluster PostgreSQL on 127.0.0.1:${PG_PORT[$cluster]}"
    if ! run_quiet "pg_ctl start ($cluster)" pg_ctl_ "$cluster" start -w -t "$START_TIMEOUT" -l "${PG_LOG[$cluster]}"; then
        tail -n 20 "${PG_LOG[$cluster]}" | sed 's/^/    /' >&2
        die "$cluster PostgreSQL failed to start; see ${PG_LOG[$cluster]}"
    fi
    wait_until "$START_TIMEOUT" "$cluster PostgreSQL to accept connections" pg_ready "$cluster" ||
        die "$cluster PostgreSQL does not accept connections; see ${PG_LOG[$cluster]}"
}

pg_stop() {
    local cluster=$1 mode=${2:-fast}
    pg_check_mode "$mode"
    pg_running "$cluster" || return 0
    log "stopping $cluster PostgreSQL (-m $mode)"
    run_quiet "pg_ctl stop ($cluster)" pg_ctl_ "$cluster" stop -w -t "$START_TIMEOUT" -m "$mode"
}

# pg_bootstrap CLUSTER DB: role trempy (password from the state dir) + database DB.
# The password only travels over stdin; statement logging is disabled for the session.
pg_bootstrap() {
    local cluster=$1 db=$2
    run_quiet "bootstrap of role/database ($cluster)" as_postgres "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 \
        -v db="$db" -h "$SOCKET_DIR" -p "${PG_PORT[$cluster]}" -U postgres -d postgres <<EOF
SET log_min_error_statement = panic;
SET log_statement = 'none';
SET log_min_duration_statement = -1;
\\set pw '$(password)'
SELECT 'CREATE ROLE trempy' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'trempy') \\gexec
ALTER ROLE trempy WITH LOGIN SUPERUSER PASSWORD :'pw';
-- "\$user" would resolve to the extension's schema trempy: unqualified tables (pgbench -i, a
-- DBA's CREATE TABLE) go to public instead, never among TREMpy's own tables.
ALTER ROLE trempy SET search_path = public;
SELECT format('CREATE DATABASE %I OWNER trempy', :'db')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \\gexec
EOF
}

pg_psql() {
    local cluster=$1
    shift
    require_stack
    pg_running "$cluster" || die "$cluster PostgreSQL is not running"
    as_postgres test -x "$PWD" 2>/dev/null || cd /
    exec runuser -u postgres -- "$PG_BIN/psql" -h "$SOCKET_DIR" -p "${PG_PORT[$cluster]}" -U postgres -d "$cluster" "$@"
}

# ----------------------------------------------------------------------------- RabbitMQ

# rabbit_env: every variable the private node and its CLI need (call in a subshell only:
# it changes HOME, which holds the Erlang cookie).
rabbit_env() {
    export RABBITMQ_NODENAME=$RABBIT_NODE
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT=$AMQP_PORT
    export RABBITMQ_DIST_PORT=$DIST_PORT
    export ERL_EPMD_PORT=$EPMD_PORT
    export ERL_EPMD_ADDRESS=127.0.0.1
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}'
    export RABBITMQ_MNESIA_BASE=$RABBIT_DIR/mnesia
    export RABBITMQ_LOG_BASE=$RABBIT_DIR/log
    export RABBITMQ_PID_FILE=$RABBIT_PID_FILE
    export RABBITMQ_CONFIG_FILE=$RABBIT_DIR/rabbitmq.conf
    export RABBITMQ_ADVANCED_CONFIG_FILE=$RABBIT_DIR/advanced.config
    export RABBITMQ_ENABLED_PLUGINS_FILE=$RABBIT_DIR/enabled_plugins
    export RABBITMQ_CONF_ENV_FILE=$RABBIT_DIR/rabbitmq-env.conf
    export HOME=$RABBIT_DIR/home
}

rabbit_cmd() { (rabbit_env && exec "$@"); }

rabbitmqctl_() { rabbit_cmd "$RABBIT_BIN/rabbitmqctl" -n "$RABBIT_NODE" "$@"; }

# rabbit_pid: PID of our node if it is alive, else empty. The node name is not on the beam
# command line (RabbitMQ sets it at runtime), so identify it by its private -home dir.
rabbit_pid() {
    local pid
    [[ -f $RABBIT_PID_FILE ]] || return 0
    pid=$(head -n1 "$RABBIT_PID_FILE" 2>/dev/null || true)
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == beam.smp ]] || return 0
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- " -home $RABBIT_DIR/home " && printf '%s' "$pid"
    return 0
}

rabbit_running() { [[ -n $(rabbit_pid) ]]; }

rabbit_write_config() {
    install -d -m 755 "$RABBIT_DIR" "$RABBIT_DIR/mnesia" "$RABBIT_DIR/log"
    install -d -m 700 "$RABBIT_DIR/home"
    cat >"$RABBIT_DIR/rabbitmq.conf" <<EOF
# Managed by scripts/dev.sh
listeners.tcp.default = 127.0.0.1:$AMQP_PORT
loopback_users = none
log.console = false
log.file.level = info
EOF
    echo '[].' >"$RABBIT_DIR/enabled_plugins"
    : >"$RABBIT_DIR/rabbitmq-env.conf"
}

rabbit_wait() {
    run_quiet "rabbitmqctl wait" rabbitmqctl_ wait --timeout "$START_TIMEOUT" "$RABBIT_PID_FILE" &&
        wait_until "$START_TIMEOUT" "AMQP port $AMQP_PORT" port_open "$AMQP_PORT"
}

# rabbit_check_ports: unless our node is running, AMQP/dist ports must be free; the epmd
# port may only be held by an epmd (ours survives `rabbitmqctl stop`).
rabbit_check_ports() {
    rabbit_running && return 0
    require_port_free "$AMQP_PORT" "AMQP"
    require_port_free "$DIST_PORT" "Erlang distribution"
    local pid
    for pid in $(listening_pids "$EPMD_PORT"); do
        [[ $(cat "/proc/$pid/comm" 2>/dev/null) == epmd ]] ||
            die "port $EPMD_PORT (epmd) is already in use by $(describe_port "$EPMD_PORT"), which is not part of this stack"
    done
}

rabbit_start() {
    if rabbit_running; then
        rabbit_wait || die "RabbitMQ node $RABBIT_NODE (pid $(rabbit_pid)) is running but not healthy; see $RABBIT_DIR/log"
        return 0
    fi
    rabbit_check_ports
    rabbit_write_config
    rm -f "$RABBIT_PID_FILE"
    log "starting RabbitMQ node $RABBIT_NODE on 127.0.0.1:$AMQP_PORT"
    run_quiet "rabbitmq-server -detached" rabbit_cmd "$RABBIT_BIN/rabbitmq-server" -detached ||
        die "RabbitMQ failed to start; see $RABBIT_DIR/log"
    if ! rabbit_wait; then
        tail -n 20 "$RABBIT_DIR/log/$RABBIT_NODE.log" 2>/dev/null | sed 's/^/    /' >&2
        die "RabbitMQ did not come up; see $RABBIT_DIR/log"
    fi
}

rabbit_stop() {
    local pid
    pid=$(rabbit_pid)
    [[ -n $pid ]] || return 0
    log "stopping RabbitMQ node $RABBIT_NODE"
    if ! run_quiet "rabbitmqctl stop" rabbitmqctl_ stop "$RABBIT_PID_FILE"; then
        warn "rabbitmqctl stop failed; terminating pid $pid"
        kill -TERM "$pid" 2>/dev/null || true
        wait_until 30 "RabbitMQ pid $pid to exit" bash -c '! kill -0 "$1" 2>/dev/null' _ "$pid" ||
            kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$RABBIT_PID_FILE"
}

# The permissions (configure, write, read) of the two TREMpy users on vhost /, as documented in
# docs/architecture.md ("RabbitMQ users and permissions"). The decoding workers declare and
# publish to the task's exchange and queue (and its dead-letter exchange and queue) and read the
# feedback queue; the applier declares and consumes the change queue, publishes dead letters and
# reports, and can write to no exchange bound to the change queue.
SOURCE_AMQP_PERMISSIONS=('^(trempy_(exchange|queue|dlx_exchange|feedback)_|dlx_queue_)'
    '^(trempy_(exchange|queue|dlx_exchange)_|dlx_queue_)'
    '^trempy_(exchange|queue|dlx_exchange|feedback)_')
APPLIER_AMQP_PERMISSIONS=('^(trempy_(queue|feedback)_|dlx_queue_)'
    '^trempy_(dlx_exchange|feedback)_'
    '^(trempy_(queue|feedback_exchange)_|dlx_queue_)')

# rabbit_user NAME PASSWORD_FILE: creates (or resets the password of) a user; password via stdin.
rabbit_user() {
    if grep -qx "$1" <<<"$RABBIT_USERS"; then
        tr -d '\n' <"$2" | run_quiet "rabbitmqctl change_password $1" rabbitmqctl_ change_password "$1"
    else
        tr -d '\n' <"$2" | run_quiet "rabbitmqctl add_user $1" rabbitmqctl_ add_user "$1"
    fi
}

# rabbit_bootstrap: user trempy (administrator, for operators and tests), trempy_source and
# trempy_applier (only what each side needs), no guest.
rabbit_bootstrap() {
    local users
    users=$(rabbitmqctl_ -q -s list_users) || die "rabbitmqctl list_users failed"
    RABBIT_USERS=$(cut -f1 <<<"$users")
    rabbit_user trempy "$PASSWORD_FILE"
    run_quiet "rabbitmqctl set_permissions" rabbitmqctl_ set_permissions -p / trempy '.*' '.*' '.*'
    run_quiet "rabbitmqctl set_user_tags" rabbitmqctl_ set_user_tags trempy administrator
    rabbit_user trempy_source "$SOURCE_AMQP_PASSWORD_FILE"
    run_quiet "rabbitmqctl set_permissions" rabbitmqctl_ set_permissions -p / trempy_source "${SOURCE_AMQP_PERMISSIONS[@]}"
    rabbit_user trempy_applier "$APPLIER_AMQP_PASSWORD_FILE"
    run_quiet "rabbitmqctl set_permissions" rabbitmqctl_ set_permissions -p / trempy_applier "${APPLIER_AMQP_PERMISSIONS[@]}"
    if grep -qx guest <<<"$RABBIT_USERS"; then
        run_quiet "rabbitmqctl delete_user guest" rabbitmqctl_ delete_user guest
    fi
}

# epmd_stop: kill the private epmd (it outlives `rabbitmqctl stop`), found via its port.
epmd_stop() {
    local pid
    for pid in $(listening_pids "$EPMD_PORT"); do
        if [[ $(cat "/proc/$pid/comm" 2>/dev/null) == epmd ]]; then
            log "stopping private epmd (pid $pid, port $EPMD_PORT)"
            kill "$pid" 2>/dev/null || true
        fi
    done
}

# ----------------------------------------------------------------------------- deps / build

# apt_install_missing: install missing APT_PACKAGES; sets APT_INSTALLED=1 if it installed any.
APT_INSTALLED=0
apt_install_missing() {
    local p missing=() rc=0
    for p in "${APT_PACKAGES[@]}"; do
        [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true) == "install ok installed" ]] || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    log "installing apt packages: ${missing[*]}"
    # Forbid maintainer scripts from starting services while we install (policy-rc.d).
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        own_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    run_quiet "apt-get update" apt-get update -q &&
        run_quiet "apt-get install" apt-get install -y -q --no-install-recommends "${missing[@]}" || rc=$?
    ((own_policy)) && rm -f "$policy"
    ((rc == 0)) || die "apt installation failed"
    APT_INSTALLED=1
}

# stop_system_services: no system PostgreSQL cluster / system RabbitMQ left running.
stop_system_services() {
    local ver name port status pid
    if command -v pg_lsclusters >/dev/null; then
        while read -r ver name port status _; do
            [[ $status == online* ]] || continue
            log "stopping system PostgreSQL cluster $ver/$name (port $port)"
            pg_ctlcluster "$ver" "$name" stop || warn "could not stop cluster $ver/$name"
        done < <(pg_lsclusters -h 2>/dev/null)
    fi
    if pgrep -u rabbitmq -x beam.smp >/dev/null 2>&1; then
        log "stopping system RabbitMQ node"
        /etc/init.d/rabbitmq-server stop >/dev/null 2>&1 || warn "could not stop the system RabbitMQ node"
    fi
    for pid in $(listening_pids 4369); do
        if [[ $(cat "/proc/$pid/comm" 2>/dev/null) == epmd && $(stat -c %U "/proc/$pid") == rabbitmq ]]; then
            log "stopping system epmd (pid $pid)"
            kill "$pid" 2>/dev/null || true
        fi
    done
}

ensure_cargo_pgrx() {
    command -v cargo >/dev/null || die "cargo is not installed (install rustup: https://rustup.rs)"
    local waited=0
    while pgrep -f 'cargo install cargo-pgrx' >/dev/null; do
        ((waited)) || log "waiting for a running 'cargo install cargo-pgrx' to finish"
        waited=1
        sleep 5
    done
    if [[ $(cd "$REPO_ROOT" && cargo pgrx --version 2>/dev/null || true) != "cargo-pgrx $PGRX_VERSION" ]]; then
        log "installing cargo-pgrx $PGRX_VERSION (takes several minutes)"
        run_quiet "cargo install cargo-pgrx" cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
    fi
    local cfg=${PGRX_HOME:-$HOME/.pgrx}/config.toml
    if ! grep -qE '^[[:space:]]*pg15[[:space:]]*=' "$cfg" 2>/dev/null; then
        log "cargo pgrx init --pg15 $PG_CONFIG"
        run_quiet "cargo pgrx init" bash -c 'cd "$1" && cargo pgrx init --pg15 "$2"' _ "$REPO_ROOT" "$PG_CONFIG"
    fi
}

# The extension's SQL tests: pg_regress runs extension/regress/sql/*.sql in the source database
# (in scratch schemas; they create no task) and compares psql's output with expected/*.out. The
# files are copied to a directory the postgres OS user owns, as pg_regress runs as that user.
regress() {
    local work pg_regress status=0
    pg_regress=$(dirname "$("$PG_CONFIG" --pgxs)")/../test/regress/pg_regress
    [[ -x $pg_regress ]] || die "pg_regress not found at $pg_regress (package postgresql-server-dev-15)"
    pg_running source || die "source PostgreSQL is not running"
    work=$(mktemp -d)
    cp -r "$REPO_ROOT/extension/regress/." "$work/"
    chown -R postgres: "$work"
    local tests
    tests=$(cd "$work/sql" && ls -- *.sql | sed 's/\.sql$//')
    # shellcheck disable=SC2086  # one word per test
    (cd "$work" && runuser -u postgres -- "$pg_regress" --inputdir=. --outputdir=. --bindir="$PG_BIN" \
        --use-existing --dbname=source --host="$SOCKET_DIR" --port="${PG_PORT[source]}" --user=postgres \
        $tests) || status=$?
    if ((status)); then
        [[ -f $work/regression.diffs ]] && cat "$work/regression.diffs" >&2
        rm -rf "$work"
        die "the extension's SQL tests failed (the diff above: expected, then what psql printed)"
    fi
    rm -rf "$work"
}

# cargo-fuzz runs the targets on the stable toolchain without a sanitizer (`-s none`): the
# parsers are safe Rust, so what the fuzzer looks for is a panic, and libFuzzer's coverage
# instrumentation needs no nightly flag.
ensure_cargo_fuzz() {
    if [[ $(cargo fuzz --version 2>/dev/null || true) != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
        log "installing cargo-fuzz $CARGO_FUZZ_VERSION"
        run_quiet "cargo install cargo-fuzz" cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
    fi
}

# Runs each fuzz target for $1 seconds from its seeds (fuzz/seeds/<target>); what the fuzzer
# finds on the way goes to a scratch corpus, never into the repository. A crash fails the run and
# leaves its input under fuzz/artifacts/<target>/.
fuzz_smoke() {
    local seconds=$1 target scratch
    ensure_cargo_fuzz
    for target in $(cd "$REPO_ROOT/fuzz" && cargo fuzz list); do
        scratch=$(mktemp -d)
        log "fuzzing $target for ${seconds}s"
        if ! (cd "$REPO_ROOT/fuzz" && CARGO_TARGET_DIR="$(target_dir)-fuzz" cargo fuzz run -s none "$target" \
            "$scratch" "seeds/$target" -- -max_total_time="$seconds" -print_final_stats=1) >"$scratch.log" 2>&1; then
            tail -n 40 "$scratch.log" >&2
            rm -rf "$scratch" "$scratch.log"
            die "fuzz target $target failed; its input is in fuzz/artifacts/$target"
        fi
        grep -E '^stat::(number_of_executed_units|new_units_added)' "$scratch.log" | sed 's/^/    /' || true
        rm -rf "$scratch" "$scratch.log"
    done
}

# ----------------------------------------------------------------------------- commands

cmd_deps() {
    require_root
    apt_install_missing
    if ((APT_INSTALLED)); then
        stop_system_services
    else
        # Nothing installed now: do not touch services a human may run on purpose, just report.
        pg_lsclusters -h 2>/dev/null | awk '$4 ~ /^online/ {print "dev.sh: note: system PostgreSQL cluster " $1 "/" $2 " is running on port " $3}' >&2 || true
    fi
    ensure_cargo_pgrx
}

cmd_build() {
    export CARGO_TARGET_DIR
    CARGO_TARGET_DIR=$(target_dir)
    cd "$REPO_ROOT"
    log "building + installing extension 'trempy' (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    cargo pgrx install --release --package trempy --pg-config "$PG_CONFIG"
    # Earlier releases' SQL and the upgrade scripts, so ALTER EXTENSION trempy UPDATE works.
    install -m 644 "$REPO_ROOT"/extension/versions/*.sql "$REPO_ROOT"/extension/upgrades/*.sql \
        "$("$PG_CONFIG" --sharedir)/extension/"
    log "building trempy-applier"
    cargo build --release -p trempy-applier
}

write_env_file() {
    local pw
    pw=$(password)
    install -d -m 700 "$ENV_DIR"
    {
        echo "# Generated by scripts/dev.sh stack-up; contains secrets (mode 600)."
        printf 'export %s=%q\n' \
            TREMPY_SOURCE_DSN "postgresql://trempy:$pw@127.0.0.1:${PG_PORT[source]}/source" \
            TREMPY_TARGET_DSN "postgresql://trempy:$pw@127.0.0.1:${PG_PORT[target]}/target" \
            TREMPY_STANDBY_DSN "postgresql://trempy:$pw@127.0.0.1:${PG_PORT[standby]}/source" \
            TREMPY_AMQP_URL "amqp://trempy_applier@127.0.0.1:$AMQP_PORT/%2f" \
            TREMPY_AMQP_PASSWORD_FILE "$APPLIER_AMQP_PASSWORD_FILE" \
            TREMPY_AMQP_ADMIN_URL "amqp://trempy:$pw@127.0.0.1:$AMQP_PORT/%2f" \
            TREMPY_SOURCE_AMQP_PASSWORD_FILE "$SOURCE_AMQP_PASSWORD_FILE" \
            TREMPY_STACK_DIR "$STACK_DIR" \
            TREMPY_SOURCE_PORT "${PG_PORT[source]}" \
            TREMPY_TARGET_PORT "${PG_PORT[target]}" \
            TREMPY_AMQP_PORT "$AMQP_PORT" \
            TREMPY_SOURCE_PGDATA "${PG_DATA[source]}" \
            TREMPY_TARGET_PGDATA "${PG_DATA[target]}" \
            TREMPY_STANDBY_PGDATA "${PG_DATA[standby]}" \
            TREMPY_STANDBY_PORT "${PG_PORT[standby]}" \
            TREMPY_SOCKET_DIR "$SOCKET_DIR" \
            TREMPY_RABBIT_NODE "$RABBIT_NODE" \
            TREMPY_RABBIT_DIST_PORT "$DIST_PORT" \
            TREMPY_EPMD_PORT "$EPMD_PORT" \
            TREMPY_APPLIER_BIN "$(target_dir)/release/trempy-applier" \
            TREMPY_PG_BIN "$PG_BIN"
    } | write_secret_file "$ENV_FILE" root
}

cmd_stack_up() {
    require_root
    if [[ ${TREMPY_SKIP_BUILD:-0} == 1 ]]; then
        log "TREMPY_SKIP_BUILD=1: skipping deps and build"
    else
        cmd_deps
        (cmd_build)
    fi
    init_layout
    prepare_state_dir
    local started=$SECONDS cluster
    # Check every port before starting anything, so a clash does not leave half a stack.
    rabbit_check_ports
    for cluster in "${CLUSTERS[@]}"; do pg_check_ports "$cluster"; done
    # initdb (first run only) is slow: run both in the background while RabbitMQ boots.
    local -A initdb_job=()
    for cluster in "${CLUSTERS[@]}"; do
        pg_initialized "$cluster" || {
            pg_initdb "$cluster" &
            initdb_job[$cluster]=$!
        }
    done
    # RabbitMQ before the source cluster: the preloaded extension talks to it.
    rabbit_start
    rabbit_bootstrap
    for cluster in target source; do
        [[ -z ${initdb_job[$cluster]:-} ]] || wait "${initdb_job[$cluster]}" || die "initdb of the $cluster cluster failed"
        pg_start "$cluster"
        pg_bootstrap "$cluster" "$cluster"
    done
    write_env_file
    cat <<EOF
TREMpy stack is up ($((SECONDS - started))s):
  source PostgreSQL  127.0.0.1:${PG_PORT[source]}  db=source  data=${PG_DATA[source]}
  target PostgreSQL  127.0.0.1:${PG_PORT[target]}  db=target  data=${PG_DATA[target]}
  RabbitMQ (AMQP)    127.0.0.1:$AMQP_PORT  node=$RABBIT_NODE (dist $DIST_PORT, epmd $EPMD_PORT)
  state dir          $STACK_DIR
  env file           $ENV_FILE   (source it: . .stack/env)
EOF
}

cmd_stack_down() {
    require_root
    init_layout
    local cluster
    if stack_exists; then
        for cluster in standby source target; do pg_stop "$cluster" fast; done
        rabbit_stop
    fi
    epmd_stop
    if stack_exists; then
        rm -rf -- "$STACK_DIR"
    elif [[ -e $STACK_DIR ]]; then
        warn "$STACK_DIR is not a TREMpy stack dir; leaving it alone"
    fi
    rm -rf -- "$ENV_DIR"
    log "stack is down"
}

cmd_stack_status() {
    require_root
    init_layout
    if ! stack_exists; then
        echo "no stack (state dir $STACK_DIR does not exist)"
        return 0
    fi
    local cluster pid
    echo "state dir: $STACK_DIR   env file: $ENV_FILE$([[ -f $ENV_FILE ]] || echo ' (missing)')"
    for cluster in "${CLUSTERS[@]}"; do
        if pg_running "$cluster"; then
            printf '%-8s PostgreSQL  127.0.0.1:%-5s running (pid %s)%s\n' "$cluster" "${PG_PORT[$cluster]}" \
                "$(pg_pid "$cluster")" "$(pg_ready "$cluster" || echo ', NOT accepting connections')"
        else
            printf '%-8s PostgreSQL  127.0.0.1:%-5s stopped\n' "$cluster" "${PG_PORT[$cluster]}"
        fi
    done
    pid=$(rabbit_pid)
    if [[ -n $pid ]]; then
        printf 'rabbitmq            127.0.0.1:%-5s running (pid %s, node %s)%s\n' "$AMQP_PORT" "$pid" "$RABBIT_NODE" \
            "$(port_open "$AMQP_PORT" || echo ', AMQP port NOT open')"
    else
        printf 'rabbitmq            127.0.0.1:%-5s stopped\n' "$AMQP_PORT"
    fi
    pid=$(listening_pids "$EPMD_PORT" | paste -sd, -)
    printf 'epmd                127.0.0.1:%-5s %s\n' "$EPMD_PORT" "$([[ -n $pid ]] && echo "running (pid $pid)" || echo stopped)"
    [[ -f $PG_PKGLIBDIR/trempy.so ]] || echo "note: $PG_PKGLIBDIR/trempy.so not installed (no preload)"
}

# Component controls (used by the integration tests). Idempotent.
pg_restart() {
    pg_check_mode "$2"
    pg_stop "$1" "$2"
    pg_start "$1"
}
cmd_source_stop() { require_stack; pg_stop source "${1:-fast}"; }
cmd_source_start() { require_stack; pg_start source; }
cmd_source_restart() { require_stack; pg_restart source "${1:-fast}"; }
cmd_target_stop() { require_stack; pg_stop target "${1:-fast}"; }
cmd_target_start() { require_stack; pg_start target; }
cmd_target_restart() { require_stack; pg_restart target "${1:-fast}"; }
cmd_rabbit_stop() { require_stack; rabbit_stop; }
cmd_rabbit_start() { require_stack; rabbit_start; }
cmd_rabbitmqctl() { require_stack; rabbitmqctl_ "$@"; }
cmd_rabbit_restart() {
    require_stack
    rabbit_stop
    rabbit_start
}
cmd_psql_source() { pg_psql source "$@"; }
cmd_psql_target() { pg_psql target "$@"; }

# with_stack_env CMD...: CMD from the repository with .stack/env exported and the build cache.
with_stack_env() {
    export CARGO_TARGET_DIR
    CARGO_TARGET_DIR=$(target_dir)
    cd "$REPO_ROOT"
    (
        set -a
        # shellcheck disable=SC1090
        . "$ENV_FILE"
        set +a
        "$@"
    )
}

# demo: stack-up (deps + build unless TREMPY_SKIP_BUILD=1), then the demo (crate demo/,
# `trempy-demo`): task `demo` on the tables of sql/demo_schema.sql, its applier left running.
cmd_demo() {
    cmd_stack_up
    with_stack_env cargo run --quiet --release -p trempy-demo -- "$@"
}
# test: stack-up (deps + build unless TREMPY_SKIP_BUILD=1), the unit tests, then the end-to-end
# suite against the stack (serially: some tests restart servers). Stops the stack afterwards if
# this command started it, unless TREMPY_KEEP_STACK=1.
cmd_test() {
    local started=1 log
    init_layout
    stack_anything_running && started=0
    cmd_stack_up
    if [[ $started == 1 && ${TREMPY_KEEP_STACK:-0} != 1 ]]; then
        trap 'cmd_stack_down' EXIT
    fi
    export CARGO_TARGET_DIR
    CARGO_TARGET_DIR=$(target_dir)
    cd "$REPO_ROOT"
    log=$(mktemp)
    log "format and lints (cargo fmt --check, clippy -D warnings)"
    cargo fmt --all --check
    cargo fmt --manifest-path fuzz/Cargo.toml --check
    PGRX_PG_CONFIG_PATH=$PG_CONFIG cargo clippy --release --workspace --all-targets -- -D warnings
    log "unit tests"
    cargo test --release -p trempy-protocol -p trempy-applier -p trempy-bench 2>&1 | tee -a "$log"
    # The extension's pure logic (plain #[test]s; nothing in them calls PostgreSQL).
    PGRX_PG_CONFIG_PATH=$PG_CONFIG cargo test --release -p trempy --lib 2>&1 | tee -a "$log"
    log "the extension's SQL tests (pg_regress)"
    regress
    log "fuzz targets, ${TREMPY_FUZZ_SECONDS:-15}s each"
    fuzz_smoke "${TREMPY_FUZZ_SECONDS:-15}"
    log "end-to-end tests against the stack"
    (
        set -a
        # shellcheck disable=SC1090
        . "$ENV_FILE"
        set +a
        cargo test --release --no-fail-fast -p trempy-e2e -- --test-threads=1
    ) 2>&1 | tee -a "$log"
    log "benchmark smoke run: every case at a tiny size (proves the benchmark works; its numbers mean nothing)"
    with_stack_env cargo run --quiet --release -p trempy-bench -- --quick --rows 3000 --txns 500 --rate 200 \
        --seconds 3 --rss-rows 3000 --timeout 600
    if [[ $started == 1 && ${TREMPY_KEEP_STACK:-0} != 1 ]]; then
        trap - EXIT
        cmd_stack_down
    fi
    # One closing line for the whole run (cargo prints one per test binary).
    awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
         END { printf "all tests: %d passed, %d failed\n", p, f; exit (p == 0 || f > 0) }' "$log"
}

# faults [ROUNDS] [SEED]: the seeded fault-injection suite (tests/tests/faults.rs), long version.
cmd_fuzz() { fuzz_smoke "${1:-15}"; }
cmd_regress() { require_stack; regress; }

cmd_faults() {
    cmd_stack_up
    TREMPY_FAULT_ROUNDS=${1:-5} TREMPY_FAULT_SEED=${2:-20261122} \
        with_stack_env cargo test --release -p trempy-e2e --test faults -- --test-threads=1 --nocapture
}

# bench: stack-up (deps + build unless TREMPY_SKIP_BUILD=1), then the benchmark (crate bench/,
# `trempy-bench --help`; BENCH_* variables or its flags).
cmd_bench() {
    cmd_stack_up
    with_stack_env cargo run --quiet --release -p trempy-bench -- "$@"
}

usage() {
    sed -n '3,/^set -euo/p' "$SCRIPT_PATH" | sed '$d; s/^# \{0,1\}//'
}

main() {
    local sub=${1:-}
    [[ -n $sub ]] || {
        usage >&2
        exit 2
    }
    shift
    case $sub in
        -h | --help | help)
            usage
            return 0
            ;;
    esac
    local fn=cmd_${sub//-/_}
    declare -F "$fn" >/dev/null || {
        printf 'dev.sh: unknown command %q\n\n' "$sub" >&2
        usage >&2
        exit 2
    }
    "$fn" "$@"
}

# One command: bash reads nothing after this line, so editing dev.sh while a command runs is safe.
main "$@"; exit
