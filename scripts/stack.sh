#!/usr/bin/env bash
# The local stack: one machine playing two gateway nodes.
#   scripts/stack.sh up | down | status
# Environment: GATEWAYHA_STATE (default .state), GATEWAYHA_PORT (public port, default 8000),
# GATEWAYHA_API_PORTS (default "8101 8102"), GATEWAYHA_EXAMPLE=0 to skip the example run,
# GATEWAYHA_TLS=1 (make up TLS=1) to serve HTTPS with a CA made under $STATE/tls,
# GATEWAYHA_BIND (make up BIND=...; default 127.0.0.1: loopback only) the public address,
# GATEWAYHA_PUBLIC_HOST (default 127.0.0.1) the host name or address users reach it by,
# GATEWAYHA_WSGI (make up WSGI=gunicorn) the API instances' WSGI server: granian (default) or gunicorn.
# GATEWAYHA_BACKEND (make up BACKEND=slurm) where Dask runs: local (default: processes of the two
# job runners' nodes) or slurm (jobs of a local Slurm started beside the stack: scripts/slurm.sh,
# under $STATE/slurm, its controller on GATEWAYHA_SLURM_PORT, default 16817, and the next two).
# Runs: a throwaway Postgres, 2 API instances (gatewayha-api: granian or gunicorn + Falcon), 2 job runners (gatewayha-jobs;
# nodes local-1 and local-2; local-1 keeps HAProxy's maps), and HAProxy on the public port.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
STATE=$(realpath -m "${GATEWAYHA_STATE:-.state}")
PORT=${GATEWAYHA_PORT:-8000}
API_PORTS=${GATEWAYHA_API_PORTS:-"8101 8102"}
TLS=${GATEWAYHA_TLS:-0}
BIND=${GATEWAYHA_BIND:-127.0.0.1}
PUBLIC_HOST=${GATEWAYHA_PUBLIC_HOST:-127.0.0.1}
WSGI=${GATEWAYHA_WSGI:-granian}
BACKEND=${GATEWAYHA_BACKEND:-local}
[ -n "$BACKEND" ] || BACKEND=local
export SLURM_DIR=$STATE/slurm SLURM_PORT=${GATEWAYHA_SLURM_PORT:-16817}
case "$WSGI" in granian|gunicorn) ;; *) echo "stack: WSGI must be granian or gunicorn, not '$WSGI'" >&2; exit 2 ;; esac
SCHEME=http; [ "$TLS" = 1 ] && SCHEME=https
RUN=$STATE/run
LOG=$STATE/log
VENV=$ROOT/.venv
CONFIG=$STATE/gatewayha.toml
export GATEWAYHA_CONFIG=$CONFIG
export PATH=$VENV/bin:$PATH
# Everything the stack writes (config, secrets, logs, pidfiles) is private to root: tenants'
# Dask processes run here under uids of their own (node.isolation = "uid").
umask 077

# A process that exists and is not a zombie (a killed child of ours stays a zombie until
# PID 1 reaps it, which here may take a while: kill -0 alone would call it alive).
pid_alive() {
    local state
    [[ "$1" =~ ^[0-9]+$ ]] || return 1
    state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}
alive() { [ -f "$1" ] && pid_alive "$(awk '{print $1; exit}' "$1")"; }

# Stopping: scripts/stack_procs.py finds a service's processes by the session its pidfile names
# and a marker in their environment, so a group whose leader already died (a killed API
# instance's granian worker, which keeps its port) is still stopped; GATEWAYHA_LOCAL_STACK is
# set only in the processes `up` starts, never in the shells that source local.env.
MARKER=GATEWAYHA_LOCAL_STACK=$STATE
procs() { python3 "$ROOT/scripts/stack_procs.py" "$@"; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local t=$1 what=$2; shift 2
    local end=$((SECONDS + t))
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $end ]; then echo "stack: timed out waiting for $what" >&2; return 1; fi
        sleep 0.2
    done
}

write_config() {
    local dsn=$1
    [ -f "$STATE/secret" ] || (umask 077; python3 -c 'import secrets; print(secrets.token_hex(32))' > "$STATE/secret")
    cat > "$CONFIG" <<TOML
# Written by scripts/stack.sh for the local stack; see README.md for every setting.
[database]
dsn = "$dsn"

[server]
secret = "$(cat "$STATE/secret")"
public_url = "$SCHEME://$PUBLIC_HOST:$PORT"
api_url = "http://127.0.0.1:$PORT/api"
reserved_ports = "$(echo $API_PORTS | tr ' ' ',')"
wsgi = "$WSGI"

[auth]
authenticators = ["token", "basic"]

[node]
host = "127.0.0.1"
launcher = "process"

[haproxy]
map_dir = "$STATE/haproxy/maps"
resync_interval = 30

[cluster]
worker_cores = 1
worker_memory_gib = 1.0
max_workers = 8
heartbeat_period = 2
heartbeat_timeout = 20
idle_timeout = 0
warm_pool_size = 1

[limits]
max_clusters = 10
max_cores = 24
max_memory_gib = 32

[[cluster_options]]
field = "worker_cores"
label = "Worker cores"
type = "int"
default = 1
min = 1
max = 4

[[cluster_options]]
field = "worker_memory_gib"
label = "Worker memory (GiB)"
type = "float"
default = 1.0
min = 0.25
max = 8

[[cluster_options]]
field = "idle_timeout"
label = "Idle timeout (s, 0 = never)"
type = "float"
default = 0
min = 0
max = 86400

[[cluster_options]]
field = "environment"
label = "Environment variables"
type = "mapping"
default = {}
TOML
    [ "$BACKEND" = slurm ] || return 0
    cat >> "$CONFIG" <<TOML

# make up BACKEND=slurm: schedulers and workers are jobs of the local Slurm (scripts/slurm.sh).
[backend]
name = "slurm"

[slurm]
conf = "$SLURM_DIR/slurm.conf"
staging_dir = "$SLURM_DIR/staging"
uid_count = 16
worker_time_limit = "1:00:00"

[[cluster_options]]
field = "partition"
label = "Slurm partition"
type = "select"
default = "dask"
options = ["dask", "short"]

[[cluster_options]]
field = "time_limit"
label = "Worker time limit (Slurm's format)"
type = "string"
default = "1:00:00"

[[cluster_options]]
field = "worker_gpus"
label = "GPUs per worker"
type = "int"
default = 0
min = 0
max = 2
TOML
}

up() {
    export "$MARKER"
    mkdir -p "$RUN" "$LOG" "$STATE/haproxy/maps" "$STATE/node-1" "$STATE/node-2"
    # Dask processes (under their own uids) reach the venv and their cluster's directory under
    # the node dirs by search permission alone: nothing else of the state dir is theirs to read.
    chmod 0711 "$STATE" "$STATE/node-1" "$STATE/node-2"
    chmod 0700 "$RUN" "$LOG" "$STATE/haproxy"
    dsn_admin=$(scripts/pg.sh start "$STATE/pg")
    psql "$dsn_admin" -qtAc "SELECT 1 FROM pg_database WHERE datname = 'gatewayha'" | grep -q 1 \
        || psql "$dsn_admin" -qc "CREATE DATABASE gatewayha" >/dev/null
    dsn=${dsn_admin%/postgres}/gatewayha
    case "$BACKEND" in
        local) ;;
        slurm) scripts/slurm.sh up ;;
        *) echo "stack: GATEWAYHA_BACKEND (make up BACKEND=...): local or slurm, got $BACKEND" >&2; exit 2 ;;
    esac
    write_config "$dsn"
    chmod 0600 "$CONFIG" "$STATE/secret"
    gatewayha-admin migrate
    if ! gatewayha-admin users list --json | python3 -c 'import json,sys; sys.exit(0 if any(u["name"]=="demo" for u in json.load(sys.stdin)) else 1)'; then
        [ -f "$STATE/demo-password" ] || (umask 077; python3 -c 'import secrets; print(secrets.token_urlsafe(12))' > "$STATE/demo-password")
        gatewayha-admin users add demo --password-stdin < "$STATE/demo-password"
    fi

    # API instances
    api_args=()
    for p in $API_PORTS; do
        api_args+=(--api "127.0.0.1:$p")
        # An instance running under the other server (make up WSGI=... changed it) starts again.
        if alive "$RUN/api-$p.pid" && [ "$(cat "$RUN/api-$p.wsgi" 2>/dev/null || echo granian)" != "$WSGI" ]; then
            echo "stack: restarting the API instance on :$p under $WSGI"
            procs stop --quiet --marker "$MARKER" --marker "GATEWAYHA_CONFIG=$CONFIG" "$RUN/api-$p.pid" || true
        fi
        if ! alive "$RUN/api-$p.pid"; then
            # A killed main process may leave its worker behind, holding the port (granian's
            # stays; gunicorn's notices, finishes what it has in flight, up to 25 s, and exits).
            procs stop --quiet --marker "$MARKER" --marker "GATEWAYHA_CONFIG=$CONFIG" "$RUN/api-$p.pid" || true
            # granian and gunicorn refuse to start while an old pidfile names a live PID, and a
            # killed, not yet reaped (zombie) main process still counts as live for them.
            rm -f "$RUN/api-$p.pid"
            MALLOC_ARENA_MAX=2 setsid gatewayha-api --bind "127.0.0.1:$p" --wsgi "$WSGI" \
                --pid-file "$RUN/api-$p.pid" >>"$LOG/api-$p.log" 2>&1 < /dev/null &
            echo "$WSGI" > "$RUN/api-$p.wsgi"
        fi
    done

    # Job runners (gatewayha-jobs): two nodes; node 1 keeps HAProxy's maps. Their pid and log
    # files are still named worker-N (tests and bench read them).
    for n in 1 2; do
        if ! alive "$RUN/worker-$n.pid"; then
            sock=""; [ $n = 1 ] && sock="$RUN/haproxy.sock"
            GATEWAYHA_NODE__NAME=local-$n GATEWAYHA_NODE__STATE_DIR="$STATE/node-$n" \
            GATEWAYHA_HAPROXY__ADMIN_SOCKET=$sock \
                setsid gatewayha-jobs >>"$LOG/worker-$n.log" 2>&1 < /dev/null &
            echo $! > "$RUN/worker-$n.pid"
        fi
    done

    # HTTPS: a CA of this stack's own (kept), and a server certificate it signs.
    tls_args=()
    if [ "$TLS" = 1 ]; then
        sans=(--san 127.0.0.1 --san localhost --san ::1 --san "$(hostname)")
        [ "$PUBLIC_HOST" != 127.0.0.1 ] && sans+=(--san "$PUBLIC_HOST")
        gatewayha-admin pki --dir "$STATE/tls" "${sans[@]}" > "$STATE/tls.out"
        tls_args=(--tls-crt "$STATE/tls/server.pem")
    fi

    # HAProxy (master-worker); config re-rendered, reloaded only when it changed.
    GATEWAYHA_HAPROXY__ADMIN_SOCKET="$RUN/haproxy.sock" gatewayha-admin render-haproxy \
        --out "$STATE/haproxy/haproxy.cfg" --bind "$BIND:$PORT" "${api_args[@]}" "${tls_args[@]}" \
        --abns-name "gatewayha-$(echo "$STATE" | md5sum | cut -c1-8)" > "$STATE/haproxy/render.out"
    haproxy -c -q -f "$STATE/haproxy/haproxy.cfg"
    if ! alive "$RUN/haproxy.pid"; then
        haproxy -W -D -p "$RUN/haproxy.pid" -S "$RUN/haproxy-master.sock" -f "$STATE/haproxy/haproxy.cfg" \
            >>"$LOG/haproxy.log" 2>&1
    elif grep -q '^wrote' "$STATE/haproxy/render.out"; then
        kill -USR2 "$(cat "$RUN/haproxy.pid")"
    fi

    for p in $API_PORTS; do wait_for 30 "API on :$p" curl -sf "http://127.0.0.1:$p/api/health"; done
    wait_for 30 "HAProxy on :$PORT" curl -sf "http://127.0.0.1:$PORT/api/health"
    # A reload keeps the old process serving a moment: wait for the one serving the new config.
    if [ "$TLS" = 1 ]; then
        wait_for 30 "HTTPS on :$PORT" curl -sf --cacert "$STATE/tls/ca.crt" "https://127.0.0.1:$PORT/api/health"
    fi

    cat > "$STATE/local.env" <<ENV
# source this file: . $STATE/local.env
export DASK_GATEWAY__ADDRESS=$SCHEME://$PUBLIC_HOST:$PORT
export DASK_GATEWAY__AUTH__TYPE=basic
export DASK_GATEWAY__AUTH__KWARGS__USERNAME=demo
export DASK_GATEWAY__AUTH__KWARGS__PASSWORD=$(cat "$STATE/demo-password")
export GATEWAYHA_CONFIG=$CONFIG
export PATH=$VENV/bin:\$PATH
ENV
    if [ "$TLS" = 1 ]; then
        # The stock client (aiohttp) and curl trust what OpenSSL's SSL_CERT_FILE names: the
        # system's CAs plus this stack's.
        cat >> "$STATE/local.env" <<ENV
export SSL_CERT_FILE=$STATE/tls/ca-bundle.pem
export CURL_CA_BUNDLE=$STATE/tls/ca-bundle.pem
ENV
    fi
    chmod 0600 "$STATE/local.env"
    echo "gatewayha is up at $SCHEME://$PUBLIC_HOST:$PORT (user demo; credentials in $STATE/local.env)"
    if [ "$WSGI" = gunicorn ]; then
        echo "API instances (ports $API_PORTS) under gunicorn: its worker timeout replaces a hung worker (server.gunicorn_timeout)"
    else
        echo "API instances (ports $API_PORTS) under granian (make up WSGI=gunicorn for gunicorn)"
    fi
    case "$BIND" in
        127.*|localhost|::1) echo "Listening on $BIND:$PORT only (loopback): other machines cannot reach it; make up BIND=0.0.0.0 TLS=1 to serve them" ;;
        *) if [ "$TLS" = 1 ]; then echo "Listening on $BIND:$PORT: reachable from other machines, over HTTPS"
           else echo "Listening on $BIND:$PORT: reachable from other machines IN CLEAR (passwords, tokens, keys): use TLS=1"; fi ;;
    esac
    if [ "$TLS" = 1 ]; then
        echo "HTTPS with this stack's own CA: $STATE/tls/ca.crt (local.env sets SSL_CERT_FILE to trust it; plain HTTP is redirected)"
    fi
    if [ "${GATEWAYHA_EXAMPLE:-1}" = 1 ]; then
        ( . "$STATE/local.env"; python "$ROOT/scripts/example.py" )
    fi
    echo "Use it:  . $STATE/local.env && python -c 'from dask_gateway import Gateway; print(Gateway().list_clusters())'"
    echo "Stop it: make down"
}

down() {
    # Stop the clusters first (their processes live in their own sessions), then the services.
    if [ -f "$CONFIG" ] && scripts/pg.sh dsn "$STATE/pg" >/dev/null 2>&1 && [ -f "$STATE/pg/data/postmaster.pid" ]; then
        gatewayha-admin clusters end-all --reason "local stack stopped" >/dev/null 2>&1 || true
        psql "$(python3 -c "import tomllib;print(tomllib.load(open('$CONFIG','rb'))['database']['dsn'])")" -qc \
            "DELETE FROM warm_pool" >/dev/null 2>&1 || true
    fi
    # Job runners, API instances and HAProxy together (each session's leftovers too); the old
    # marker (GATEWAYHA_CONFIG, set by stacks started before GATEWAYHA_LOCAL_STACK) also counts.
    # Slurm jobs the job runners had no time to cancel: this Slurm is the stack's own.
    if [ -f "$SLURM_DIR/run/slurmctld.pid" ]; then
        export SLURM_CONF=$SLURM_DIR/slurm.conf
        for _ in $(seq 30); do
            mapfile -t jobs < <(squeue --noheader --format=%A 2>/dev/null)
            [ ${#jobs[@]} -eq 0 ] && break
            scancel "${jobs[@]}" 2>/dev/null || true
            sleep 0.5
        done
    fi
    procs stop --quiet --marker "$MARKER" --marker "GATEWAYHA_CONFIG=$CONFIG" \
        "$RUN"/worker-*.pid "$RUN"/api-*.pid "$RUN"/haproxy.pid || true
    rm -f "$RUN"/worker-*.pid "$RUN"/api-*.pid "$RUN"/api-*.wsgi "$RUN"/haproxy.pid
    # Schedulers and workers launched by the local backend (pidfiles under each node's state dir).
    mapfile -t units < <(find "$STATE" \( -path "$STATE/pg" -o -path "$SLURM_DIR" \) -prune -o -name '*.pid' -print 2>/dev/null)
    if [ ${#units[@]} -gt 0 ]; then
        procs stop --quiet --unit "${units[@]}" || true
        rm -f "${units[@]}"
    fi
    scripts/slurm.sh down
    scripts/pg.sh stop "$STATE/pg"
    # Last resort: anything this stack started that is still alive (it says what it stops).
    procs sweep --marker "$MARKER" --unit-home "$STATE/"
    echo "gatewayha local stack stopped"
}

status() {
    for f in "$RUN"/*.pid; do
        [ -f "$f" ] || continue
        if alive "$f"; then echo "$(basename "$f" .pid): running ($(cat "$f"))"; else echo "$(basename "$f" .pid): dead"; fi
    done
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
