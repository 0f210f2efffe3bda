-- Pull-through proxies added through /api/v1 or `aioreg proxy add`, beside those of the
-- config file; the same fields as a [[proxy]] entry. A running server re-reads them.
CREATE TABLE proxies (
    namespace TEXT PRIMARY KEY,
    upstream TEXT NOT NULL,
    username TEXT NOT NULL DEFAULT '',
    password TEXT NOT NULL DEFAULT '',
    password_env TEXT NOT NULL DEFAULT '',
    password_file TEXT NOT NULL DEFAULT '',
    upstream_prefix TEXT NOT NULL DEFAULT '',
    revalidate_interval REAL NOT NULL,
    serve_stale INTEGER NOT NULL,
    max_bytes INTEGER NOT NULL,
    connect_timeout REAL NOT NULL,
    read_timeout REAL NOT NULL,
    max_connections INTEGER NOT NULL,
    created_at REAL NOT NULL
) WITHOUT ROWID;
