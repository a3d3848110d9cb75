#!/usr/bin/env bash
# Throwaway PostgreSQL for the local stack and tests.
#   scripts/pg.sh start DIR [PORT]   init (once) and start; prints the superuser DSN
#   scripts/pg.sh stop DIR           fast stop
#   scripts/pg.sh dsn DIR            print the DSN of a running instance
# Postgres refuses to run as root, so it runs as the `postgres` user on a data
# directory that user owns; it listens on loopback and a socket in DIR only.
# Tenants' Dask code runs on the same machine under uids of its own: TCP logins need the
# superuser's password (scram-sha-256; DIR/password, mode 0600, part of the DSN printed), and
# DIR (the socket's directory, where logins are trusted) is reachable by root and postgres only.
set -euo pipefail
cmd=${1:?usage: pg.sh start|stop|dsn DIR [PORT]}
dir=$(realpath -m "${2:?usage: pg.sh start|stop|dsn DIR [PORT]}")
bin=/usr/lib/postgresql/15/bin
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# A parent that postgres cannot traverse (e.g. /root) would stop it: open the path. On every
# start and stop: a parent may have been closed since (a later pytest run sets its tmp root back to 0700).
open_path() { local p="$dir"; while [ "$p" != / ]; do p=$(dirname "$p"); [ -x "$p" ] || chmod o+x "$p"; [ "$(id -u)" = 0 ] && chmod o+x "$p" 2>/dev/null || true; done; }
dsn() { echo "postgresql://postgres:$(cat "$dir/password")@127.0.0.1:$(cat "$dir/port")/postgres"; }
case "$cmd" in
start)
    [ -x "$bin/initdb" ] || { echo "pg.sh: $bin/initdb missing (apt-get install postgresql)" >&2; exit 1; }
    mkdir -p "$dir"
    chmod 0700 "$dir"
    [ -s "$dir/password" ] || (umask 077; python3 -c 'import secrets; print(secrets.token_hex(16))' > "$dir/password")
    open_path
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        port=${3:-$(free_port)}
        echo "$port" > "$dir/port"
        [ "$(id -u)" = 0 ] && chown postgres: "$dir" "$dir/password"
        as_pg "$bin/initdb" -D "$dir/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
            --pwfile="$dir/password" -E UTF8 --no-locale >"$dir/initdb.log" 2>&1
        cat >> "$dir/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 128MB
log_min_messages = warning
CONF
    fi
    if as_pg "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then dsn; exit 0; fi
    as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 start >/dev/null
    if grep -Eq '^host.*trust' "$dir/data/pg_hba.conf"; then
        # A data dir made before passwords: set one, then require it on TCP.
        as_pg "$bin/psql" -h "$dir" -p "$(cat "$dir/port")" -U postgres -qc \
            "ALTER USER postgres PASSWORD '$(cat "$dir/password")'" postgres >/dev/null
        sed -i -E 's/^(host.*)trust$/\1scram-sha-256/' "$dir/data/pg_hba.conf"
        as_pg "$bin/pg_ctl" -D "$dir/data" reload >/dev/null
    fi
    dsn
    ;;
stop)
    [ -d "$dir/data" ] || exit 0
    open_path
    as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null 2>&1 || true
    ;;
dsn) dsn ;;
*) echo "usage: pg.sh start|stop|dsn DIR [PORT]" >&2; exit 2 ;;
esac
