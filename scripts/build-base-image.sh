#!/usr/bin/env bash
# Build the local base image for the molecule tests: Debian 12 with systemd as PID 1.
#   scripts/build-base-image.sh [--force]
# No image registry is reachable here, only the Debian package mirror, so the root
# filesystem comes from mmdebstrap (with the host's own apt sources) and `docker import`.
# Does nothing when the image exists and is up to date (see "fingerprint" below), unless
# --force. Run as root, after scripts/docker-setup.sh. See molecule/README.md.
set -euo pipefail

IMAGE=${GATEWAYHA_BASE_IMAGE:-gatewayha/debian-systemd:bookworm}
SUITE=bookworm
# What Ansible needs (python3, python3-apt, sudo), what systemd needs in a container
# (systemd-sysv for /sbin/init, dbus for systemctl/hostnamectl), and a few tools the
# tests use (ip, ps/pgrep, ping for the VRRP checks).
INCLUDE=systemd,systemd-sysv,dbus,python3,python3-apt,sudo,iproute2,procps,ca-certificates,iputils-ping
# Units masked in the image: login prompts make no sense in a container (and with a tty,
# e.g. `docker run -t` / molecule `tty: true`, console-getty.service really starts agetty),
# and the first-boot wizard must never prompt. Other host-only units (systemd-modules-load,
# sys-kernel-*.mount, udev, ...) skip themselves by their Condition*= in a container; they
# stay unmasked because a role restarting a masked unit would fail.
MASK="getty.target console-getty.service systemd-firstboot.service"

say() { echo "build-base-image: $*"; }
die() { echo "build-base-image: ERROR: $*" >&2; exit 1; }

force=0
case "${1:-}" in
    --force) force=1 ;;
    "") ;;
    *) die "usage: $0 [--force]" ;;
esac
[ "$(id -u)" -eq 0 ] || die "run as root (mmdebstrap root mode)"
command -v mmdebstrap >/dev/null || die "mmdebstrap missing: run scripts/docker-setup.sh first"
docker info >/dev/null 2>&1 || die "docker does not answer: run scripts/docker-setup.sh first"

start=$SECONDS
work=$(mktemp -d /var/tmp/gatewayha-base.XXXXXX)
trap 'rm -rf "$work"' EXIT

# --- apt sources: the host's Debian entries for this suite ------------------------------
# Only the package mirror is reachable, so use exactly what the host uses. Keep Debian
# entries for bookworm, bookworm-updates, bookworm-security, ...; skip third-party
# repositories (their keyrings are not in the image) and disabled files/stanzas.
python3 - "$SUITE" > "$work/sources" <<'EOF'
import glob, re, sys
suite = sys.argv[1]
ok_suite = re.compile(r"^%s(-updates|-security|-backports|-proposed-updates)?$" % suite)
entries = []  # (uris, suites, components, signed_by)
def add(types, uris, suites, comps, signed):
    if "deb" not in types:
        return
    suites = [s for s in suites if ok_suite.match(s)]
    if suites and uris:
        if signed and not signed.startswith("/usr/share/keyrings/debian-archive"):
            signed = None  # a custom key file: rely on the image's trusted keys instead
        entries.append((uris, suites, comps or ["main"], signed))
files = ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")) \
        + sorted(glob.glob("/etc/apt/sources.list.d/*.sources"))
for path in files:
    try:
        text = open(path).read()
    except OSError:
        continue
    if path.endswith(".sources"):
        for stanza in re.split(r"\n\s*\n", text):
            f, key = {}, None
            for line in stanza.splitlines():
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                if line[0] in " \t" and key:
                    f[key] += " " + line.strip()
                elif ":" in line:
                    key, val = line.split(":", 1)
                    key = key.strip().lower(); f[key] = val.strip()
            if f.get("enabled", "yes").lower() == "no":
                continue
            add(f.get("types", "").split(), f.get("uris", "").split(), f.get("suites", "").split(),
                f.get("components", "").split(), f.get("signed-by", "").strip() or None)
    else:
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            m = re.match(r"^(deb|deb-src)\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line)
            if not m:
                continue
            opts = dict(o.split("=", 1) for o in (m.group(2) or "").split() if "=" in o)
            add([m.group(1)], [m.group(3)], [m.group(4)], m.group(5).split(), opts.get("signed-by"))
for uris, suites, comps, signed in entries:
    print("Types: deb\nURIs: %s\nSuites: %s\nComponents: %s" % (" ".join(uris), " ".join(suites), " ".join(comps)))
    if signed:
        print("Signed-By: %s" % signed)
    print()
EOF
if [ -s "$work/sources" ]; then
    mirrors=("$work/sources")
    say "apt sources from the host: $(awk '/^URIs:/{u=$2} /^Suites:/{$1=""; printf "%s%s", sep, u $0; sep="; "}' "$work/sources")"
else
    mirrors=()  # mmdebstrap's default: deb.debian.org with -updates and -security
    say "no Debian $SUITE entries in the host's apt sources; using mmdebstrap's default mirror"
fi

# The host's apt settings that matter for reaching the same mirror (e.g. this mirror is a
# frozen snapshot: Check-Valid-Until "false"). mmdebstrap keeps them in the image
# (/etc/apt/apt.conf.d/99mmdebstrap), so apt inside the containers behaves like the host's.
aptopts=()
while IFS= read -r opt; do
    aptopts+=(--aptopt="$opt")
done < <(apt-config dump | grep -E '^Acquire::(Check-Valid-Until|Check-Date|https?::Proxy) ' || true)
aptopts+=(--aptopt='Acquire::Languages "none"')  # no Translation-* downloads on apt-get update

# --- rebuild only when missing or stale --------------------------------------------------
# The image bakes in the host's apt sources/settings and CA certificates (the TLS-inspecting
# egress CA may change with the machine), so a fingerprint of those and of this script is
# kept as a label; a mismatch rebuilds as if the image were missing.
fingerprint=$( {
    cat "$0" "$work/sources"; printf '%s\n' "${aptopts[@]}"
    if [ -d /usr/local/share/ca-certificates ]; then
        find /usr/local/share/ca-certificates -type f -name '*.crt' | LC_ALL=C sort | xargs -r cat
    fi
} | sha256sum | cut -c1-16)
have=$(docker image inspect -f '{{index .Config.Labels "org.gatewayha.base.fingerprint"}}' "$IMAGE" 2>/dev/null || true)
if [ $force -eq 0 ] && [ -n "$have" ]; then
    if [ "$have" = "$fingerprint" ]; then
        say "$IMAGE is up to date ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')); --force rebuilds"
        exit 0
    fi
    say "$IMAGE is stale (apt sources, CA certificates or this script changed): rebuilding"
elif [ $force -eq 0 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    say "$IMAGE exists but was not built by this script: rebuilding"
fi

# --- root filesystem -------------------------------------------------------------------
# The hooks are run by mmdebstrap with the chroot directory as $1: single quotes on purpose.
# shellcheck disable=SC2016
hook_ca='mkdir -p "$1/usr/local/share/ca-certificates"
if [ -d /usr/local/share/ca-certificates ]; then cp -a /usr/local/share/ca-certificates/. "$1/usr/local/share/ca-certificates/"; fi
out=$(chroot "$1" update-ca-certificates 2>&1) || { echo "$out" >&2; exit 1; }
echo "build-base-image: update-ca-certificates: $(echo "$out" | grep -E "added, .*removed" || echo "$out")"'
hook_mask="for u in $MASK; do ln -sf /dev/null \"\$1/etc/systemd/system/\$u\"; done"

say "mmdebstrap $SUITE (+ $INCLUDE)"
# shellcheck disable=SC2016
mmdebstrap --quiet --mode=root --variant=apt --include="$INCLUDE" \
    "${aptopts[@]}" \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --customize-hook="$hook_ca" \
    --customize-hook="$hook_mask" \
    --customize-hook='rm -f "$1/etc/hostname"; : > "$1/etc/machine-id"' \
    "$SUITE" "$work/rootfs.tar" "${mirrors[@]}"

# `docker import --change` of this dockerd (20.10) rejects STOPSIGNAL ("not a valid change
# command"), so import the root filesystem under a temporary tag and add the metadata with a
# one-line-per-instruction build (no context, no network; the classic builder because
# there is no buildx plugin here).
old_id=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
tmp="$IMAGE-rootfs-$$"
say "docker import + metadata -> $IMAGE"
docker import --message "mmdebstrap $SUITE: $INCLUDE" "$work/rootfs.tar" "$tmp" >/dev/null
printf '%s\n' \
    "FROM $tmp" \
    'ENV container=docker LANG=C.UTF-8' \
    'STOPSIGNAL SIGRTMIN+3' \
    "LABEL org.gatewayha.base.suite=$SUITE org.gatewayha.base.fingerprint=$fingerprint org.gatewayha.base.built=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    'CMD ["/lib/systemd/systemd"]' \
  | DOCKER_BUILDKIT=0 docker build --quiet --tag "$IMAGE" - >/dev/null 2>"$work/build.err" \
  || { cat "$work/build.err" >&2; docker rmi "$tmp" >/dev/null 2>&1; die "docker build failed"; }
docker rmi "$tmp" >/dev/null   # only untags: the layer stays as the image's parent
# Drop the image this one replaces (kept if a container still uses it).
if [ -n "$old_id" ] && [ "$old_id" != "$(docker image inspect -f '{{.Id}}' "$IMAGE")" ]; then
    docker rmi "$old_id" >/dev/null 2>&1 || say "the previous image $old_id is still in use; left in place"
fi
size=$(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')
say "built $IMAGE in $((SECONDS - start)) s, size $size"
