#!/usr/bin/env bash
# Make a Docker daemon available for the molecule tests, on a Debian 12 machine where
# systemd is NOT PID 1 (CI runners, these VMs). Run as root; needs no stdin.
# Idempotent and fast when done: if `docker info` answers, it only prints the version.
# Otherwise it installs docker.io/iptables/mmdebstrap when missing, starts dockerd by hand
# in its own session (it outlives this script, for the later molecule step), and waits for it.
#   log:     /var/log/gatewayha-dockerd.log
#   pidfile: /run/gatewayha-dockerd.pid   (stop with: kill "$(cat /run/gatewayha-dockerd.pid)")
# See molecule/README.md.
set -euo pipefail

LOG=/var/log/gatewayha-dockerd.log
PIDFILE=/run/gatewayha-dockerd.pid
WAIT_SECONDS=${GATEWAYHA_DOCKERD_WAIT:-60}

say() { echo "docker-setup: $*"; }
die() { echo "docker-setup: ERROR: $*" >&2; exit 1; }

print_version() {
    docker version --format 'docker client {{.Client.Version}}, daemon {{.Server.Version}} (API {{.Server.APIVersion}})'
}

[ "$(id -u)" -eq 0 ] || die "run as root"
# One run at a time (two concurrent runs would both start a dockerd).
exec 9>/run/gatewayha-docker-setup.lock
flock 9

if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    print_version
    exit 0
fi

# --- packages -------------------------------------------------------------------------
need=()
for pair in docker.io:/usr/sbin/dockerd iptables:/usr/sbin/iptables mmdebstrap:/usr/bin/mmdebstrap; do
    [ -e "${pair#*:}" ] || need+=("${pair%%:*}")
done
# Without systemd nobody may have mounted the cgroup hierarchy; cgroupfs-mount does that.
if ! grep -qE '^cgroup2? ' /proc/mounts; then
    [ -x /usr/sbin/cgroupfs-mount ] || need+=(cgroupfs-mount)
fi
if [ ${#need[@]} -gt 0 ]; then
    say "apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    aptlog=$(mktemp)
    # No recommends: they pull apparmor, needrestart, criu, ... none of which we need.
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"; } >"$aptlog" 2>&1 \
        || { tail -30 "$aptlog" >&2; rm -f "$aptlog"; die "apt-get failed"; }
    rm -f "$aptlog"
fi
if ! grep -qE '^cgroup2? ' /proc/mounts; then
    say "mounting the cgroup hierarchy (cgroupfs-mount)"
    cgroupfs-mount
fi

# --- a dockerd that is still starting? ---------------------------------------------------
ours_alive() {
    local pid
    [ -s "$PIDFILE" ] && pid=$(cat "$PIDFILE") && kill -0 "$pid" 2>/dev/null \
        && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]
}

if ! ours_alive && other=$(pgrep -o -x dockerd); then
    # Someone else's dockerd (another pidfile, by hand): starting a second one would only
    # fight over /var/run/docker.sock, so wait for that one instead.
    pid=$other
    say "a dockerd not started by this script (pid $pid) is running but not answering yet; waiting"
    start=$(date +%s.%N)
elif ! ours_alive; then
    rm -f "$PIDFILE"
    # --- iptables: docker needs it for NAT (apt inside containers) -----------------------
    # Debian 12's default `iptables` is iptables-nft. Probe it the way dockerd uses it
    # (nat table, user chain, addrtype match, MASQUERADE, conntrack); fall back to the
    # legacy backend, and only as a last resort run dockerd with --iptables=false
    # (containers then have no outbound NAT: apt/pip inside them will not work).
    probe() {  # $1 = iptables binary
        local ipt=$1 ok=0 c=GWHA-PROBE-$$
        "$ipt" -w -t nat -N "$c" 2>/dev/null || return 1
        "$ipt" -w -t nat -A "$c" -m addrtype --dst-type LOCAL -j RETURN 2>/dev/null \
            && "$ipt" -w -t nat -A "$c" -s 10.255.0.0/16 ! -o lo -j MASQUERADE 2>/dev/null \
            && "$ipt" -w -t filter -N "$c" 2>/dev/null \
            && "$ipt" -w -t filter -A "$c" -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN 2>/dev/null \
            || ok=1
        "$ipt" -w -t filter -F "$c" 2>/dev/null; "$ipt" -w -t filter -X "$c" 2>/dev/null
        "$ipt" -w -t nat -F "$c" 2>/dev/null; "$ipt" -w -t nat -X "$c" 2>/dev/null
        return $ok
    }
    extra=()
    if probe iptables; then
        say "iptables: $(iptables -V) works"
    elif [ -x /usr/sbin/iptables-legacy ] && probe iptables-legacy; then
        say "iptables: nft backend failed, switching the alternative to iptables-legacy"
        update-alternatives --set iptables /usr/sbin/iptables-legacy >/dev/null
        update-alternatives --set ip6tables /usr/sbin/ip6tables-legacy >/dev/null
    else
        say "WARNING: no working iptables; dockerd --iptables=false (no NAT for containers)"
        extra+=(--iptables=false)
    fi

    # Containers inherit dockerd's limits; raise the soft limit as far as we may
    # (there is no CAP_SYS_RESOURCE here, so the hard limit stays).
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

    say "starting dockerd${extra[*]:+ ${extra[*]}} (log $LOG)"
    start=$(date +%s.%N)
    # setsid + no stdin: the daemon survives this script, its shell and a CI step.
    # (no job control in a script, so setsid execs dockerd in place and $! is its pid;
    # 9>&- : the daemon must not inherit, and so hold forever, our lock)
    setsid dockerd --pidfile "$PIDFILE" "${extra[@]}" </dev/null >>"$LOG" 2>&1 9>&- &
    pid=$!
else
    pid=$(cat "$PIDFILE")
    say "dockerd (pid $pid) is running but not answering yet; waiting"
    start=$(date +%s.%N)
fi

deadline=$((SECONDS + WAIT_SECONDS))
until docker info >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
        tail -20 "$LOG" >&2
        die "dockerd did not answer within ${WAIT_SECONDS}s (log: $LOG)"
    fi
    # (a dead child of ours stays a zombie until we exit: look at its state, not kill -0)
    if [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo gone)" = Z ] || [ ! -e "/proc/$pid" ]; then
        tail -20 "$LOG" >&2
        die "dockerd exited (log: $LOG)"
    fi
    sleep 0.2
done
say "dockerd answers after $(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s"
print_version
