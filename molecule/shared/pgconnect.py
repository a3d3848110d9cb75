"""Try one connection to PostgreSQL and say how it went, as JSON on stdout.

    python pgconnect.py HOST PORT USER DBNAME [KEY=VALUE ...]   (password in PGPASSWORD)

KEY=VALUE are more libpq parameters, e.g. sslmode=disable, hostaddr=..., sslrootcert=...

Runs with any Python that has psycopg 3: the app venv on the test host, and the
gatewayha venv on the nodes (/opt/gatewayha/venv/bin/python). Exit 0 when connected.
"""

import json
import os
import sys

import psycopg


def main() -> int:
    host, port, user, dbname = sys.argv[1:5]
    extra = dict(arg.split("=", 1) for arg in sys.argv[5:])
    try:
        with psycopg.connect(
            host=host,
            port=int(port),
            user=user,
            dbname=dbname,
            password=os.environ.get("PGPASSWORD", ""),
            connect_timeout=5,
            **extra,
        ) as conn:
            value = conn.execute("SELECT 1").fetchone()[0]
            ssl = conn.pgconn.ssl_in_use
        print(json.dumps({"connected": True, "select": value, "ssl": ssl}))
        return 0
    except psycopg.Error as e:
        print(json.dumps({"connected": False, "error": str(e).strip()}))
        return 1


if __name__ == "__main__":
    sys.exit(main())
