#!/usr/bin/env bash
# Throwaway PostgreSQL for the local stack and tests.
#   scripts/pg.sh start DIR [PORT]   init (once) and start; prints the superuser DSN
#   scripts/pg.sh stop DIR           fast stop
#   scripts/pg.sh dsn DIR            print the DSN of a running instance
# Postgres refuses to run as root, so it runs as the `postgres` user on a data
# directory that user owns; it listens on loopback and a socket in DIR only.
set -euo pipefail
cmd=${1:?usage: pg.sh start|stop|dsn DIR [PORT]}
dir=$(realpath -m "${2:?usage: pg.sh start|stop|dsn DIR [PORT]}")
bin=/usr/lib/postgresql/15/bin
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# A parent that postgres cannot traverse (e.g. /root) would stop it: open the path. On every
# start and stop: a parent may have been closed since (a later pytest run sets its tmp root back to 0700).
open_path() { local p="$dir"; while [ "$p" != / ]; do p=$(dirname "$p"); [ -x "$p" ] || chmod o+x "$p"; [ "$(id -u)" = 0 ] && chmod o+x "$p" 2>/dev/null || true; done; }
dsn() { echo "postgresql://postgres@127.0.0.1:$(cat "$dir/port")/postgres"; }
case "$cmd" in
start)
    [ -x "$bin/initdb" ] || { echo "pg.sh: $bin/initdb missing (apt-get install postgresql)" >&2; exit 1; }
    mkdir -p "$dir"
    open_path
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        port=${3:-$(free_port)}
        echo "$port" > "$dir/port"
        [ "$(id -u)" = 0 ] && chown postgres: "$dir"
        as_pg "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-locale >"$dir/initdb.log" 2>&1
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
