#!/usr/bin/env bash
# make bench: gatewayha's local stack and dask-gateway-server 2026.3.0 (the anchor) side by side,
# measured with the same stock dask-gateway 2026.3.0 client; writes docs/benchmarks.md.
#
# Everything it starts listens on 127.0.0.1, ports 19000-19999:
#   gatewayha: HAProxy :19000, API :19101 :19102, Postgres :19050 (state .state/bench-stack)
#   anchor:    proxy (API + scheduler TLS) :19200, private API :19201 (state .state/bench-anchor)
#   https phase only: a second gatewayha stack with GATEWAYHA_TLS=1: HAProxy :19400, API :19401
#              :19402, Postgres :19450 (state .state/bench-stack-tls), beside the plain one, so
#              HTTP and HTTPS runs can alternate without a restart between them (the stock client's
#              POST over http:// is redirected on a TLS stack: plain creates need a plain stack)
# The bench venv (.state/bench-venv) holds dask-gateway-server[local]==2026.3.0 (its local backend needs sqlalchemy) and dask-gateway==2026.3.0.
#
# Environment:
#   GATEWAYHA_BENCH_WARM_POOL=N   also measure (a) with GATEWAYHA_CLUSTER__WARM_POOL_SIZE=N
#                                 (default 4; 0 skips it; skipped, and said so, when the stack
#                                 refuses the setting)
#   BENCH_REPS (3), BENCH_REPS_B100 (1), BENCH_REPS_C (2), BENCH_N_SEQ (10), BENCH_N_ROUTES (20)
#   BENCH_PHASES (a,sentinel,d,b20,b100,c,e,f,g,https)  BENCH_SCALE=0 skips the scale(10**12) phase;
#                                 a BENCH_PHASES given runs the warm pool's (a) only if it names a,
#                                 and scale only if it names scale
#   BENCH_HTTPS_REPS (9), BENCH_HTTPS_CREATE_PAIRS (15), BENCH_HTTPS_SECONDS (3), BENCH_HTTPS_RTT_PAIRS (300)
#   BENCH_REPORT (docs/benchmarks.md)
#
# BENCH_PHASES=slurm alone: gatewayha (GATEWAYHA_BACKEND=slurm) vs the anchor's SlurmBackend on one
# local Slurm (see its block below); it updates only the "Slurm" section (and its goal rows).
# BENCH_PHASES=https alone updates only the "HTTPS vs HTTP" section (and its goal rows) of the
# existing report (bench/report.py --merge); any other selection rewrites the whole page.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BVENV=$ROOT/.state/bench-venv
GHA_STATE=$ROOT/.state/bench-stack
ANCHOR_STATE=$ROOT/.state/bench-anchor
GHA_PORT=19000
GHA_API_PORTS="19101 19102"
PG_PORT=19050
ANCHOR_PORT=19200
ANCHOR_API_PORT=19201
TLS_STATE=$ROOT/.state/bench-stack-tls
TLS_PORT=19400
TLS_API_PORTS="19401 19402"
TLS_PG_PORT=19450
PHASES=${BENCH_PHASES:-a,sentinel,d,b20,b100,c,e,f,g,https}
has_phase() { [[ ",$PHASES," == *",$1,"* ]]; }
OUT=$ROOT/.state/bench-results.json
LOG=$ROOT/.state/bench.log
REPORT=${BENCH_REPORT:-$ROOT/docs/benchmarks.md}
STARTED=$(date +%s)

say() { echo "[bench] $*" >&2; }

# ------------------------------------------------------------------ the bench venv
stamp=$BVENV/.bench-installed
# On Debian's /usr/bin/python3, as .venv (scripts/bootstrap.sh): the Slurm phase's anchor jobs run
# from this venv under a service account, which cannot reach a python under /root (pyenv).
base_python=/usr/bin/python3
[ -x "$base_python" ] || base_python=$(command -v python3)
# The anchor's schedulers run from this venv: give them the same distributed and bokeh (dashboards)
# as gatewayha's schedulers, or the anchor would start lighter schedulers (no dashboard without bokeh).
same() { "$ROOT/.venv/bin/python" -c "import importlib.metadata as m; print('$1==' + m.version('$1'))"; }
want="$base_python dask-gateway-server[local,jobqueue]==2026.3.0 dask-gateway==2026.3.0 $(same distributed) $(same dask) $(same bokeh)"
if [ ! -x "$BVENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "building $BVENV ($want)"
    rm -rf "$BVENV"
    "$base_python" -m venv "$BVENV"
    # shellcheck disable=SC2086
    { "$BVENV/bin/pip" install -q --upgrade pip && "$BVENV/bin/pip" install -q ${want#* }; } > "$BVENV.pip.log" 2>&1 \
        || { tail -20 "$BVENV.pip.log"; say "pip install failed"; exit 1; }
    echo "$want" > "$stamp"
fi

# ------------------------------------------------------------------ the load generator of (d)
if ! command -v wrk >/dev/null; then
    say "apt-get install wrk"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
fi

# ------------------------------------------------------------------ start / stop
# The local stack keeps a warm pool by default: "without warm pool" must say so (size 0), unless the
# stack predates the setting (then it has no pool anyway).
POOL_ENV=(GATEWAYHA_CLUSTER__WARM_POOL_SIZE=0)
gha_env() {
    env GATEWAYHA_STATE="$GHA_STATE" GATEWAYHA_PORT=$GHA_PORT GATEWAYHA_API_PORTS="$GHA_API_PORTS" \
        GATEWAYHA_TLS=0 GATEWAYHA_EXAMPLE=0 GATEWAYHA_LIMITS__MAX_CLUSTERS=1000 GATEWAYHA_LIMITS__MAX_CORES=0 \
        GATEWAYHA_LIMITS__MAX_MEMORY_GIB=0 "${POOL_ENV[@]}" "$@"
}

kill_leftovers() {  # Dask processes started under one of our state dirs (found by that path), by pid
    local marker=$1 p
    for p in /proc/[0-9]*; do
        { grep -qs "$marker" "$p/environ" || tr '\0' ' ' 2>/dev/null < "$p/cmdline" | grep -q "$marker"; } \
            && tr '\0' ' ' 2>/dev/null < "$p/cmdline" | grep -Eq 'dask (scheduler|worker)' \
            && kill -KILL "${p#/proc/}" 2>/dev/null
    done
    return 0
}

gha_down() {
    [ -d "$GHA_STATE" ] && gha_env scripts/stack.sh down >/dev/null 2>&1
    kill_leftovers "$GHA_STATE/"
}

# The https phase's stack: the same settings as the bench stack, with GATEWAYHA_TLS=1.
tls_env() {
    gha_env GATEWAYHA_STATE="$TLS_STATE" GATEWAYHA_PORT=$TLS_PORT GATEWAYHA_API_PORTS="$TLS_API_PORTS" \
        GATEWAYHA_TLS=1 "$@"
}

tls_up() {
    mkdir -p "$TLS_STATE"
    scripts/pg.sh start "$TLS_STATE/pg" $TLS_PG_PORT >/dev/null
    tls_env scripts/stack.sh up > "$TLS_STATE/up.log" 2>&1
}

tls_down() {
    [ -d "$TLS_STATE" ] && tls_env scripts/stack.sh down >/dev/null 2>&1
    kill_leftovers "$TLS_STATE/"
}

anchor_down() {
    local f=$ANCHOR_STATE/anchor.pid pid
    [ -f "$f" ] || return 0
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q dask-gateway-server; then
        kill -TERM "$pid" 2>/dev/null || true   # stops its clusters and its proxy
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
    # Dask processes the anchor left (e.g. after the scale(10**12) phase killed it), by their TLS path.
    kill_leftovers "$ANCHOR_STATE/clusters/"
}

cleanup() {
    set +e
    trap '' INT TERM  # finish cleaning up even if interrupted again
    say "stopping the anchor and the gatewayha bench stack"
    anchor_down
    gha_down
    tls_down
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

gha_up() {  # extra env (e.g. the warm pool) as arguments
    scripts/pg.sh start "$GHA_STATE/pg" $PG_PORT >/dev/null
    gha_env "$@" scripts/stack.sh up > "$GHA_STATE/up.log" 2>&1
}

anchor_up() {
    mkdir -p "$ANCHOR_STATE/clusters"
    [ -f "$ANCHOR_STATE/password" ] || (umask 077; python3 -c 'import secrets; print(secrets.token_urlsafe(12))' > "$ANCHOR_STATE/password")
    (
        cd "$ANCHOR_STATE"
        export BENCH_ANCHOR_BIN=$BVENV/bin BENCH_ANCHOR_DIR=$ANCHOR_STATE/clusters \
            BENCH_ANCHOR_ADDRESS=127.0.0.1:$ANCHOR_PORT BENCH_ANCHOR_API=127.0.0.1:$ANCHOR_API_PORT
        BENCH_ANCHOR_PASSWORD=$(cat "$ANCHOR_STATE/password") \
            setsid "$BVENV/bin/dask-gateway-server" -f "$ROOT/bench/anchor_config.py" \
            >> "$ANCHOR_STATE/anchor.log" 2>&1 < /dev/null &
        echo $! > "$ANCHOR_STATE/anchor.pid"
    )
    for _ in $(seq 1 150); do
        curl -sf "http://127.0.0.1:$ANCHOR_PORT/api/health" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    say "the anchor did not answer on :$ANCHOR_PORT (log: $ANCHOR_STATE/anchor.log)"; tail -20 "$ANCHOR_STATE/anchor.log"
    return 1
}

# ------------------------------------------------------------------ BENCH_PHASES=slurm (alone)
# gatewayha's stack with GATEWAYHA_BACKEND=slurm (its Slurm: scripts/slurm.sh under
# .state/bench-slurm-stack/slurm, slurmctld on :BENCH_SLURM_PORT (16857), nodes on the next two)
# and the anchor with its own jobqueue SlurmBackend on that same Slurm; bench/slurm_bench.py
# measures one side after the other and report.py --merge puts the "Slurm" section into the page.
#   gatewayha: HAProxy :19500, API :19501 :19502, Postgres :19550   anchor: :19600, API :19601
# The anchor submits through `sudo -nHu <user> dask-gateway-jobqueue-launcher` (its design,
# dask-gateway issue #335): this phase writes a sudoers drop-in for that one command and removes it
# when it ends. Its jobs run as BENCH_SLURM_ANCHOR_USER (gwdask-15, one of scripts/slurm.sh's accounts).
if [ "$PHASES" = slurm ]; then
    GHA_STATE=$ROOT/.state/bench-slurm-stack GHA_PORT=19500 GHA_API_PORTS="19501 19502" PG_PORT=19550
    ANCHOR_STATE=$ROOT/.state/bench-slurm-anchor ANCHOR_PORT=19600 ANCHOR_API_PORT=19601
    SL_PORT=${BENCH_SLURM_PORT:-16857}
    SL_DIR=$GHA_STATE/slurm
    SL_USER=${BENCH_SLURM_ANCHOR_USER:-gwdask-15}
    SUDOERS=/etc/sudoers.d/gatewayha-bench-anchor
    eval "orig_$(declare -f gha_env)"
    # Each gatewayha cluster runs as an account of its own: the local stack's 16 accounts would cap
    # the 20 concurrent creates at 16 ("every uid of the range is in use"); 24 here
    # (scripts/slurm.sh creates the missing ones, gwdask-16.., as it created gwdask-0..15).
    SL_POOL=${BENCH_SLURM_POOL:-24}
    gha_env() {
        orig_gha_env GATEWAYHA_BACKEND=slurm GATEWAYHA_SLURM_PORT="$SL_PORT" GATEWAYHA_CLUSTER__MAX_WORKERS=20 \
            SLURM_POOL_COUNT="$SL_POOL" GATEWAYHA_SLURM__UID_COUNT="$SL_POOL" "$@"
    }
    sl_cleanup() {
        set +e
        trap '' INT TERM
        say "stopping the anchor, the gatewayha Slurm stack (and its Slurm); removing $SUDOERS"
        anchor_down
        gha_down
        rm -f "$SUDOERS"
    }
    anchor_down; gha_down
    for p in $GHA_PORT $GHA_API_PORTS $PG_PORT $ANCHOR_PORT $ANCHOR_API_PORT $SL_PORT $((SL_PORT + 1)) $((SL_PORT + 2)); do
        port_free "$p" || { say "port $p is in use by something else; not starting"; exit 1; }
    done
    rm -rf "$GHA_STATE" "$ANCHOR_STATE"
    mkdir -p "$GHA_STATE" "$ANCHOR_STATE"
    trap sl_cleanup EXIT
    trap 'exit 130' INT TERM
    command -v sudo >/dev/null || { say "apt-get install sudo (the anchor's SlurmBackend needs it)"; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sudo >/dev/null; }
    say "starting gatewayha's stack with GATEWAYHA_BACKEND=slurm on :$GHA_PORT (Slurm on :$SL_PORT)"
    gha_up || { tail -30 "$GHA_STATE/up.log"; exit 1; }
    id "$SL_USER" >/dev/null || { say "no account $SL_USER"; exit 1; }
    # The anchor's jobs (as $SL_USER) reach the bench venv and their staging dir by search
    # permission alone; wrappers give sbatch/squeue/scancel this Slurm's config (the anchor runs
    # them with an emptied environment) and the launcher a home (the account's is /nonexistent).
    chmod o+x "$ROOT/.state" "$ANCHOR_STATE"
    # The anchor runs sbatch as the user, who must read slurm.conf (0644 at a site; the stack's
    # Slurm writes it 0600, as gatewayha submits as root). It holds no secret (munge's key is apart).
    chmod o+r "$SL_DIR/slurm.conf"
    install -d -m 0711 "$ANCHOR_STATE/bin" "$ANCHOR_STATE/staging"
    install -d -m 0700 -o "$SL_USER" -g "$(id -gn "$SL_USER")" "$ANCHOR_STATE/staging/$SL_USER"
    for cmd in sbatch squeue scancel; do
        printf '#!/bin/sh\nSLURM_CONF=%s; export SLURM_CONF\nexec /usr/bin/%s "$@"\n' "$SL_DIR/slurm.conf" "$cmd" > "$ANCHOR_STATE/bin/$cmd"
    done
    printf '#!/bin/sh\nHOME=%s; export HOME\nexec %s "$@"\n' "$ANCHOR_STATE/staging/$SL_USER" \
        "$BVENV/bin/dask-gateway-jobqueue-launcher" > "$ANCHOR_STATE/bin/launcher"
    chmod 0755 "$ANCHOR_STATE"/bin/*
    echo "root ALL=($SL_USER) NOPASSWD: $ANCHOR_STATE/bin/launcher" > "$SUDOERS.tmp"
    chmod 0440 "$SUDOERS.tmp"
    visudo -cqf "$SUDOERS.tmp" || { say "visudo refused the drop-in"; rm -f "$SUDOERS.tmp"; exit 1; }
    mv "$SUDOERS.tmp" "$SUDOERS"
    export BENCH_ANCHOR_SLURM_BIN=$ANCHOR_STATE/bin BENCH_ANCHOR_STAGING=$ANCHOR_STATE/staging
    say "starting dask-gateway-server 2026.3.0 (SlurmBackend, jobs as $SL_USER) on :$ANCHOR_PORT"
    anchor_up
    export BENCH_GHA_STATE=$GHA_STATE BENCH_GHA_PORT=$GHA_PORT BENCH_GHA_API_PORTS="$GHA_API_PORTS" \
        BENCH_ANCHOR_STATE=$ANCHOR_STATE BENCH_ANCHOR_PORT=$ANCHOR_PORT BENCH_ANCHOR_USER=$SL_USER \
        BENCH_SLURM_DIR=$SL_DIR SLURM_CONF=$SL_DIR/slurm.conf
    OUT=$ROOT/.state/bench-slurm-results.json
    rm -f "$OUT"
    LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
    "$BVENV/bin/python" -u bench/slurm_bench.py --out "$OUT" --sides "${BENCH_SLURM_SIDES:-gatewayha,anchor}" \
        2> >(tee "$ROOT/.state/bench-slurm.log" | grep -a --line-buffered '^\[bench' >&2)
    LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
    ENDED=$(date +%s)
    "$BVENV/bin/python" bench/report.py --results "$OUT" --out "$REPORT" --started "$STARTED" --ended "$ENDED" \
        --load-start "$LOAD_START" --load-end "$LOAD_END" --merge
    say "done in $((ENDED - STARTED)) s; merged the Slurm section into ${REPORT#$ROOT/} (raw results: ${OUT#$ROOT/})"
    exit 0
fi

# A previous run's leftovers (ours only: the bench state dirs), then a fresh start.
anchor_down
gha_down
tls_down
ports="$GHA_PORT $GHA_API_PORTS $PG_PORT $ANCHOR_PORT $ANCHOR_API_PORT"
has_phase https && ports="$ports $TLS_PORT $TLS_API_PORTS $TLS_PG_PORT"
for p in $ports; do
    port_free "$p" || { say "port $p is in use by something else; not starting"; exit 1; }
done
rm -rf "$GHA_STATE" "$ANCHOR_STATE" "$TLS_STATE" "$OUT"
mkdir -p "$GHA_STATE" "$ANCHOR_STATE"
trap cleanup EXIT
trap 'exit 130' INT TERM

say "starting gatewayha's local stack on :$GHA_PORT and dask-gateway-server 2026.3.0 on :$ANCHOR_PORT"
if ! gha_up; then
    if grep -q 'warm_pool_size: unknown setting' "$GHA_STATE/up.log"; then
        POOL_ENV=()
        gha_up || { tail -30 "$GHA_STATE/up.log"; exit 1; }
    else
        tail -30 "$GHA_STATE/up.log"; exit 1
    fi
fi
anchor_up

export BENCH_GHA_STATE=$GHA_STATE BENCH_GHA_PORT=$GHA_PORT BENCH_GHA_API_PORTS="$GHA_API_PORTS" \
    BENCH_ANCHOR_STATE=$ANCHOR_STATE BENCH_ANCHOR_PORT=$ANCHOR_PORT BENCH_APP_PYTHON=$ROOT/.venv/bin/python
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

bench() {  # the driver's progress lines on the terminal, everything it prints in the log
    "$BVENV/bin/python" -u bench/bench.py --out "$OUT" "$@" 2> >(tee -a "$LOG" | grep -a --line-buffered '^\[bench' >&2)
}
: > "$LOG"
main_phases=$(tr "," "\n" <<<"$PHASES" | { grep -vx -e https -e scale || true; } | paste -sd, -)
[ -z "$main_phases" ] || bench --phases "$main_phases"

# ------------------------------------------------------------------ HTTPS vs HTTP (second stack, TLS)
if has_phase https; then
    say "starting gatewayha's stack with GATEWAYHA_TLS=1 on :$TLS_PORT beside the plain one"
    if tls_up; then
        # The stock client trusts the stack's CA through SSL_CERT_FILE, as local.env sets it for
        # users; aiohttp reads it when imported, so it is set for this phase's whole process.
        BENCH_TLS_STATE=$TLS_STATE BENCH_TLS_PORT=$TLS_PORT BENCH_TLS_API_PORTS="$TLS_API_PORTS" \
            SSL_CERT_FILE=$TLS_STATE/tls/ca-bundle.pem bench --phases https
    else
        tail -30 "$TLS_STATE/up.log"
        say "the TLS stack did not start; the https phase is skipped"
    fi
    tls_down
fi

# ------------------------------------------------------------------ warm pool (optional)
GATEWAYHA_BENCH_WARM_POOL=${GATEWAYHA_BENCH_WARM_POOL:-4}
has_phase a || GATEWAYHA_BENCH_WARM_POOL=0
if [ "$GATEWAYHA_BENCH_WARM_POOL" != 0 ]; then
    n=$GATEWAYHA_BENCH_WARM_POOL
    say "restarting the stack with GATEWAYHA_CLUSTER__WARM_POOL_SIZE=$n"
    gha_down
    if gha_up GATEWAYHA_CLUSTER__WARM_POOL_SIZE="$n"; then
        # wait (bounded: 120 s) until the pool is filled: at least n schedulers, unchanged for 5 s
        "$BVENV/bin/python" - "$n" <<'PY'
import os, sys, time
sys.path.insert(0, "bench")
from common import dask_procs
n, end = int(sys.argv[1]), time.monotonic() + 120
last, since = -1, time.monotonic()
while time.monotonic() < end:
    cur = len(dask_procs(os.environ["BENCH_GHA_STATE"] + "/")["scheduler"])
    if cur != last:
        last, since = cur, time.monotonic()
    elif cur >= n and time.monotonic() - since >= 5:
        break
    time.sleep(0.5)
print(f"[bench] warm pool: {last} schedulers running", file=sys.stderr)
PY
        bench --phases a --tag _warm
    else
        reason=$(grep -a -m1 -i 'error\|warm_pool' "$GHA_STATE/up.log" || tail -1 "$GHA_STATE/up.log")
        say "the stack refused GATEWAYHA_CLUSTER__WARM_POOL_SIZE=$n: $reason"
        "$BVENV/bin/python" - "$OUT" "$n" "$reason" <<'PY'
import json, sys
p, n, reason = sys.argv[1], sys.argv[2], sys.argv[3]
r = json.load(open(p))
r["a_warm_skipped"] = f"GATEWAYHA_CLUSTER__WARM_POOL_SIZE={n} refused by the stack: {reason}"
json.dump(r, open(p, "w"), indent=1)
PY
    fi
    # a fresh stack (new database) for what follows, with no trace of the pool
    gha_down
    rm -rf "$GHA_STATE"
    mkdir -p "$GHA_STATE"
    gha_up || { tail -30 "$GHA_STATE/up.log"; exit 1; }
fi

# ------------------------------------------------------------------ scale(10**12), last: it may end the anchor
if [ "${BENCH_SCALE:-1}" != 0 ] && { [ -z "${BENCH_PHASES:-}" ] || has_phase scale; }; then
    bench --phases scale
fi

LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
ENDED=$(date +%s)
merge=()
[ "$PHASES" = https ] && [ -f "$REPORT" ] && merge=(--merge)
"$BVENV/bin/python" bench/report.py --results "$OUT" --out "$REPORT" --started "$STARTED" --ended "$ENDED" \
    --load-start "$LOAD_START" --load-end "$LOAD_END" --warm-pool "${GATEWAYHA_BENCH_WARM_POOL:-}" "${merge[@]}"
say "done in $((ENDED - STARTED)) s; wrote ${REPORT#$ROOT/} (raw results: ${OUT#$ROOT/}, log: ${LOG#$ROOT/})"
