-- lifecycle: activity events, namespace quotas, retention policies.
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    repository TEXT NOT NULL,
    reference TEXT,
    digest TEXT,
    actor TEXT,
    detail TEXT
);
CREATE INDEX events_at ON events(at);
CREATE INDEX events_repository ON events(repository, at);
ALTER TABLE namespaces ADD COLUMN quota_bytes INTEGER;
CREATE TABLE retention_policies (
    target TEXT PRIMARY KEY,
    policy BLOB NOT NULL
) WITHOUT ROWID;
