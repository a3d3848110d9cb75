"""PostgreSQL access: the connection pool, migrations and the queries."""
