"""Versioned schema. Each step runs once, in order, inside one transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

MIGRATIONS: list[str] = [
    # 1: the core registry index.
    """
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
    """,
    # 2: scrub can quarantine a blob whose bytes no longer match its digest.
    """
    ALTER TABLE blobs ADD COLUMN quarantined_at REAL;
    """,
    # 3: access control: users, tokens, namespaces, members, settings, audit.
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        password_hash TEXT,
        is_admin INTEGER NOT NULL DEFAULT 0,
        is_robot INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    );
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        secret_hash TEXT NOT NULL,
        scopes BLOB NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL,
        revoked_at REAL,
        last_used_at REAL
    ) WITHOUT ROWID;
    CREATE INDEX tokens_user ON tokens(user_id);
    CREATE TABLE namespaces (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        owner_id INTEGER REFERENCES users(id) ON DELETE SET NULL,
        visibility TEXT NOT NULL DEFAULT 'private',
        rules BLOB,
        created_at REAL NOT NULL
    );
    CREATE TABLE namespace_members (
        namespace_id INTEGER NOT NULL REFERENCES namespaces(id) ON DELETE CASCADE,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        role TEXT NOT NULL,
        PRIMARY KEY (namespace_id, user_id)
    ) WITHOUT ROWID;
    CREATE TABLE repository_settings (
        name TEXT PRIMARY KEY,
        visibility TEXT,
        rules BLOB
    ) WITHOUT ROWID;
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        resource TEXT NOT NULL,
        client TEXT,
        allowed INTEGER NOT NULL,
        reason TEXT
    );
    CREATE INDEX audit_at ON audit(at);
    """,
    # 4: lifecycle: activity events, namespace quotas, retention policies.
    """
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
    """,
    # 5: a credential generation per user, which refresh and access tokens are bound to.
    """
    ALTER TABLE users ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
    UPDATE users SET generation = (random() & 281474976710655);
    """,
    # 6: quotas read an incremental per-namespace usage figure that triggers keep in step
    # with every link and unlink, whichever code path makes it; upload sessions know their
    # client so open sessions can be capped per client.
    """
    ALTER TABLE repositories ADD COLUMN namespace TEXT GENERATED ALWAYS AS (
        CASE WHEN instr(name, '/') > 0 THEN substr(name, 1, instr(name, '/') - 1) ELSE name END
    ) VIRTUAL;
    CREATE TABLE namespace_blobs (
        namespace TEXT NOT NULL,
        digest TEXT NOT NULL,
        links INTEGER NOT NULL,
        PRIMARY KEY (namespace, digest)
    ) WITHOUT ROWID;
    CREATE TABLE namespace_usage (
        namespace TEXT PRIMARY KEY,
        blob_bytes INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO namespace_blobs(namespace, digest, links)
        SELECT r.namespace, rb.digest, count(*) FROM repository_blobs rb
        JOIN repositories r ON r.id = rb.repository_id GROUP BY r.namespace, rb.digest;
    INSERT INTO namespace_usage(namespace, blob_bytes)
        SELECT nb.namespace, sum(b.size) FROM namespace_blobs nb
        JOIN blobs b ON b.digest = nb.digest GROUP BY nb.namespace;
    CREATE TRIGGER repository_blobs_linked AFTER INSERT ON repository_blobs BEGIN
        INSERT INTO namespace_blobs(namespace, digest, links)
            VALUES ((SELECT namespace FROM repositories WHERE id = NEW.repository_id),
                    NEW.digest, 1)
            ON CONFLICT DO UPDATE SET links = links + 1;
        INSERT INTO namespace_usage(namespace, blob_bytes)
            SELECT nb.namespace, b.size FROM namespace_blobs nb JOIN blobs b USING (digest)
            WHERE nb.namespace = (SELECT namespace FROM repositories WHERE id = NEW.repository_id)
              AND nb.digest = NEW.digest AND nb.links = 1
            ON CONFLICT DO UPDATE SET blob_bytes = blob_bytes + excluded.blob_bytes;
    END;
    CREATE TRIGGER repository_blobs_unlinked AFTER DELETE ON repository_blobs BEGIN
        UPDATE namespace_blobs SET links = links - 1
            WHERE namespace = (SELECT namespace FROM repositories WHERE id = OLD.repository_id)
              AND digest = OLD.digest;
        UPDATE namespace_usage
            SET blob_bytes = blob_bytes - (SELECT size FROM blobs WHERE digest = OLD.digest)
            WHERE namespace = (SELECT namespace FROM repositories WHERE id = OLD.repository_id)
              AND EXISTS (SELECT 1 FROM namespace_blobs nb WHERE nb.namespace =
                  namespace_usage.namespace AND nb.digest = OLD.digest AND nb.links = 0);
        DELETE FROM namespace_blobs
            WHERE namespace = (SELECT namespace FROM repositories WHERE id = OLD.repository_id)
              AND digest = OLD.digest AND links = 0;
    END;
    -- A repository's links go before the repository does, so the trigger above still
    -- finds its namespace (a cascade would run after the row is gone).
    CREATE TRIGGER repository_unlinks_first BEFORE DELETE ON repositories BEGIN
        DELETE FROM repository_blobs WHERE repository_id = OLD.id;
    END;
    ALTER TABLE uploads ADD COLUMN client TEXT;
    CREATE INDEX uploads_client ON uploads(client);
    """,
]


def statements(script: str) -> Iterator[str]:
    """A migration's statements one by one; a trigger body's ``;`` does not end its CREATE."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                yield pending.strip()
            pending = ""
    if pending.strip(" \n;"):
        yield pending.strip()
