-- quotas read an incremental per-namespace usage figure that triggers keep in step with every
-- link and unlink, whichever code path makes it; upload sessions know their client so open
-- sessions can be capped per client.
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
