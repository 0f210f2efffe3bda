-- the core registry index.
CREATE TABLE repositories (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    last_push_at REAL,
    last_pull_at REAL
);
CREATE TABLE blobs (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    xxh3_128 TEXT,
    created_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE repository_blobs (
    repository_id INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    digest TEXT NOT NULL REFERENCES blobs(digest),
    linked_at REAL NOT NULL,
    PRIMARY KEY (repository_id, digest)
) WITHOUT ROWID;
CREATE INDEX repository_blobs_digest ON repository_blobs(digest);
CREATE TABLE manifests (
    id INTEGER PRIMARY KEY,
    repository_id INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    digest TEXT NOT NULL,
    media_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    artifact_type TEXT,
    subject TEXT,
    annotations BLOB,
    body BLOB NOT NULL,
    pushed_at REAL NOT NULL,
    last_pull_at REAL,
    UNIQUE (repository_id, digest)
);
CREATE INDEX manifests_subject ON manifests(repository_id, subject)
    WHERE subject IS NOT NULL;
CREATE TABLE manifest_blobs (
    manifest_id INTEGER NOT NULL REFERENCES manifests(id) ON DELETE CASCADE,
    digest TEXT NOT NULL REFERENCES blobs(digest),
    PRIMARY KEY (manifest_id, digest)
) WITHOUT ROWID;
CREATE INDEX manifest_blobs_digest ON manifest_blobs(digest);
CREATE TABLE manifest_children (
    manifest_id INTEGER NOT NULL REFERENCES manifests(id) ON DELETE CASCADE,
    child_digest TEXT NOT NULL,
    PRIMARY KEY (manifest_id, child_digest)
) WITHOUT ROWID;
CREATE INDEX manifest_children_child ON manifest_children(child_digest);
CREATE TABLE tags (
    repository_id INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    manifest_id INTEGER NOT NULL REFERENCES manifests(id) ON DELETE CASCADE,
    pushed_at REAL NOT NULL,
    last_pull_at REAL,
    PRIMARY KEY (repository_id, name)
) WITHOUT ROWID;
CREATE INDEX tags_manifest ON tags(manifest_id);
CREATE TABLE uploads (
    id TEXT PRIMARY KEY,
    repository TEXT NOT NULL,
    started_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    committed_bytes INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
