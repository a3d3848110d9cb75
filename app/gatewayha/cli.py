"""gatewayha-admin: migrate, users, tokens, nodes, clusters, render-haproxy, pki, reencrypt."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gatewayha.config import ConfigError, load_settings


def _conn(settings):
    from gatewayha.db.pool import connect

    return connect(settings.database, "gatewayha-admin")


def cmd_migrate(settings, args) -> int:
    from gatewayha.db.migrate import current_version, migrate, pending_contract

    with _conn(settings) as conn:
        applied = migrate(conn, contract=args.contract)
        version = current_version(conn)
        pending = pending_contract(conn)
    print(f"applied: {', '.join(applied) or 'nothing'}; schema version {version}")
    if pending:
        # Expand-then-contract: what the previous release still uses goes only once no node runs it.
        print(f"contract migrations pending: {', '.join(pending)} (gatewayha-admin migrate --contract,"
              " once every node runs this release)")  # fmt: skip
    return 0


def cmd_users(settings, args) -> int:
    from gatewayha.auth import users

    with _conn(settings) as conn:
        if args.action == "add":
            password = None
            if args.password_stdin:
                password = sys.stdin.readline().rstrip("\r\n")
                if not password:
                    print("error: empty password on stdin", file=sys.stderr)
                    return 2
            try:
                created = users.add_user(conn, args.name, password, replace=args.update)
            except users.UserError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            print(f"{'created' if created else 'updated'} user {args.name}")
        elif args.action == "remove":
            from gatewayha import clusters, lifecycle

            active = [
                r["name"]
                for r in conn.execute(
                    "SELECT name FROM clusters WHERE owner = %s AND status = ANY(%s)",
                    (args.name, lifecycle.names(lifecycle.ACTIVE)),
                ).fetchall()
            ]
            if active and not args.force:
                print(
                    f"error: {args.name} has {len(active)} active clusters; stop them first or pass --force",
                    file=sys.stderr,
                )
                return 1
            for name in active:
                clusters.stop_cluster(conn, name, lifecycle.reasons.owner_removed(args.name))
            if not users.remove_user(conn, args.name):
                print(f"error: no user {args.name}", file=sys.stderr)
                return 1
            print(f"removed user {args.name} (and its clusters' records)")
        else:
            rows = users.list_users(conn)
            if args.json:
                print(json.dumps([{**r, "created_at": r["created_at"].isoformat()} for r in rows]))
            else:
                print(f"{'NAME':<24} {'PASSWORD':<9} {'ACTIVE':>6}  CREATED")
                for r in rows:
                    print(
                        f"{r['name']:<24} {'yes' if r['has_password'] else 'no':<9} "
                        f"{r['active_clusters']:>6}  {r['created_at']:%Y-%m-%d %H:%M}"
                    )
    return 0


def cmd_tokens(settings, args) -> int:
    from gatewayha.auth import users

    with _conn(settings) as conn:
        try:
            token = users.create_token(conn, args.user, args.days)
        except users.UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print(token)
    return 0


def cmd_nodes(settings, args) -> int:
    from gatewayha import lifecycle, liveness

    if getattr(args, "action", None) in ("drain", "undrain"):
        with _conn(settings) as conn:
            if not liveness.set_draining(conn, args.name, args.action == "drain"):
                print(f"no node {args.name}", file=sys.stderr)
                return 1
        print(
            f"node {args.name} drained: it starts no new scheduler and keeps no warm pool; its running "
            "clusters stay (gatewayha-admin clusters list)"
            if args.action == "drain"
            else f"node {args.name} takes new schedulers again"
        )
        return 0
    with _conn(settings) as conn:
        rows = conn.execute(
            "SELECT n.name, n.host, n.last_seen, n.draining,"
            " now() - n.last_seen < make_interval(secs => %s) AS alive,"
            " (SELECT count(*) FROM clusters c WHERE c.node = n.name AND c.status = ANY(%s)) AS clusters"
            " FROM nodes n ORDER BY n.name",
            (settings.jobs.node_timeout, lifecycle.names(lifecycle.LIVE)),
        ).fetchall()
    print(f"{'NODE':<20} {'HOST':<16} {'ALIVE':<6} {'DRAINING':<8} {'CLUSTERS':>8}  LAST SEEN")
    for r in rows:
        print(
            f"{r['name']:<20} {r['host']:<16} {'yes' if r['alive'] else 'NO':<6} {'yes' if r['draining'] else '':<8} "
            f"{r['clusters']:>8}  {r['last_seen']:%Y-%m-%d %H:%M:%S}"
        )
    return 0


def cmd_clusters(settings, args) -> int:
    from gatewayha import clusters, lifecycle

    with _conn(settings) as conn:
        if args.action == "end-all":
            ended = lifecycle.end_all(conn, lifecycle.reasons.gateway_shut_down(args.reason))
            print(f"ended {len(ended)} clusters")
            return 0
        if args.action == "stop":
            if not clusters.stop_cluster(conn, args.name, lifecycle.reasons.BY_ADMINISTRATOR):
                print(f"cluster {args.name} is not active")
                return 1
            print(f"stopping {args.name}")
            return 0
        rows = conn.execute(
            "SELECT name, owner, status, node, reason, created_at, target_workers,"
            " (SELECT count(*) FROM workers w WHERE w.cluster = c.name AND w.status = %s) AS workers"
            " FROM clusters c WHERE %s OR status = ANY(%s) ORDER BY created_at",
            (lifecycle.WorkerStatus.RUNNING, args.all, lifecycle.names(lifecycle.ACTIVE)),
        ).fetchall()
    # WORKERS: running now / what the scheduler last asked for (its heartbeat's target count).
    print(f"{'NAME':<33} {'OWNER':<12} {'STATUS':<9} {'NODE':<12} {'WORKERS':>9}  REASON")
    for r in rows:
        workers = f"{r['workers']}/{r['target_workers']}"
        node = r["node"] or "-"
        print(f"{r['name']:<33} {r['owner']:<12} {r['status']:<9} {node:<12} {workers:>9}  {r['reason'] or ''}")
    return 0


def cmd_render_haproxy(settings, args) -> int:
    from gatewayha.dashboards import jwt_key
    from gatewayha.files import write_atomic
    from gatewayha.routes.render import default_template_path, render_haproxy_cfg
    from gatewayha.routes.sync import ensure_map_files

    map_dir = Path(settings.haproxy.map_dir).resolve()
    ensure_map_files(map_dir)
    servers = [{"name": f"api-{i + 1}-{a.replace(':', '-')}", "address": a} for i, a in enumerate(args.api)]
    text = render_haproxy_cfg(
        args.template or default_template_path(),
        bind=args.bind,
        abns_name=args.abns_name or f"gatewayha-{settings.node.name}",
        map_dir=str(map_dir),
        admin_socket=str(Path(settings.haproxy.admin_socket).resolve()) if settings.haproxy.admin_socket else "",
        pidfile=args.pidfile or "",
        api_servers=servers,
        maxconn=args.maxconn,
        dashboard_jwt_key=jwt_key(settings.server.secret),
        dashboard_jwt_previous_keys=[jwt_key(s) for s in settings.server.secrets[1:]],
        tls_crt=str(Path(args.tls_crt).resolve()) if args.tls_crt else "",
    )
    if args.out == "-":
        sys.stdout.write(text)
    else:
        # It holds the dashboard token key: readable by root (HAProxy's master) only.
        changed = write_atomic(args.out, text, mode=0o600)
        print(f"{'wrote' if changed else 'unchanged'} {args.out}")
    return 0


def cmd_reencrypt(settings, args) -> int:
    from gatewayha import clusters

    with _conn(settings) as conn:
        counts = clusters.reencrypt(conn, settings)
    print(
        f"checked {counts['checked']} clusters and pooled schedulers: {counts['moved']} moved to the current"
        f" secret, {counts['unreadable']} unreadable"
    )
    return 1 if counts["unreadable"] else 0


def cmd_pki(settings, args) -> int:
    from gatewayha import pki

    result = pki.ensure(args.dir, args.san)
    print(
        f"{'created' if result.ca_created else 'kept'} CA {result.ca_crt}; "
        f"{'issued' if result.server_issued else 'kept'} server certificate {result.server_pem} "
        f"for {', '.join(args.san)}; trust bundle {result.bundle}"
    )
    return 0


def check_config(path: str) -> int:
    """Validate a configuration file by itself (no GATEWAYHA_* overrides): an unknown section or
    setting, a wrong type or a bad value is reported with its name. The appliance role runs it on
    the rendered file before installing it, so a typo never reaches the restart of every node."""
    try:
        settings = load_settings(path, environ={})
    except ConfigError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 1
    # Deprecated names still work (an upgrade keeps a deployed file valid): said, not refused.
    for message in settings.deprecations:
        print(f"{path}: warning: {message}", file=sys.stderr)
    print(f"{path}: valid")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gatewayha-admin", description=__doc__)
    p.add_argument("--config", help="TOML file (default: $GATEWAYHA_CONFIG)")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("migrate", help="apply database migrations (safe on several nodes at once)")
    m.add_argument(
        "--contract",
        action="store_true",
        help="also drop what only the previous release used: only once every node runs this release",
    )

    u = sub.add_parser("users", help="manage users")
    us = u.add_subparsers(dest="action", required=True)
    ua = us.add_parser("add", help="add a user")
    ua.add_argument("name")
    ua.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    ua.add_argument("--update", action="store_true", help="set the password if the user exists")
    ul = us.add_parser("list", help="list users")
    ul.add_argument("--json", action="store_true")
    ur = us.add_parser("remove", help="remove a user")
    ur.add_argument("name")
    ur.add_argument("--force", action="store_true", help="stop the user's active clusters first")

    t = sub.add_parser("tokens", help="API tokens")
    ts = t.add_subparsers(dest="action", required=True)
    tc = ts.add_parser("create", help="create an API token for a user (printed once)")
    tc.add_argument("user")
    tc.add_argument("--days", type=float, default=None, help="expiry in days (default: never)")

    n = sub.add_parser("nodes", help="list gateway nodes; drain one (no new schedulers there) or undrain it")
    ns = n.add_subparsers(dest="action")
    for action, text in (("drain", "start no new scheduler on NODE"), ("undrain", "let NODE start schedulers again")):
        ns.add_parser(action, help=text).add_argument("name", metavar="NODE")

    c = sub.add_parser("clusters", help="list or stop clusters")
    cs = c.add_subparsers(dest="action", required=True)
    cl = cs.add_parser("list")
    cl.add_argument("--all", action="store_true", help="include stopped and failed clusters")
    cst = cs.add_parser("stop")
    cst.add_argument("name")
    cea = cs.add_parser(
        "end-all",
        help="record every active cluster as ended: only once the whole gateway, its clusters' processes"
        " with it, is stopped (the local stack's `make down`)",
    )
    cea.add_argument("--reason", required=True, help="stored as each cluster's reason")

    r = sub.add_parser("render-haproxy", help="write haproxy.cfg from the template")
    r.add_argument("--out", required=True, help="path, or - for stdout")
    r.add_argument("--bind", action="append", required=True, help="public bind, e.g. 127.0.0.1:8000 (repeatable)")
    r.add_argument("--api", action="append", required=True, help="API instance address (repeatable)")
    r.add_argument("--template", help="template path (default: the repo's haproxy/haproxy.cfg.j2)")
    r.add_argument("--abns-name")
    r.add_argument("--pidfile")
    r.add_argument("--maxconn", type=int, default=4096)
    r.add_argument("--tls-crt", help="PEM (certificate chain, then key): serve HTTPS on the public port")

    sub.add_parser(
        "reencrypt",
        help="after a rotation of server.secret: move stored keys and tokens to the current secret",
    )

    v = sub.add_parser("check-config", help="validate a configuration file (exit 1 and say why when it is not)")
    v.add_argument("file", help="the TOML file to check")

    k = sub.add_parser("pki", help="a local CA and a server certificate it signs (make up TLS=1)")
    k.add_argument("--dir", required=True, help="directory of ca.crt, ca.key, server.pem, ca-bundle.pem")
    k.add_argument("--san", action="append", required=True, help="name or IP the server answers to (repeatable)")
    return p


COMMANDS = {
    "migrate": cmd_migrate,
    "users": cmd_users,
    "tokens": cmd_tokens,
    "nodes": cmd_nodes,
    "clusters": cmd_clusters,
    "render-haproxy": cmd_render_haproxy,
    "pki": cmd_pki,
    "reencrypt": cmd_reencrypt,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check-config":
        return check_config(args.file)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    return COMMANDS[args.command](settings, args)


if __name__ == "__main__":
    sys.exit(main())
