-- an admin's deprecation notice on a repository: pulls carry it as a Warning header.
-- It lives on the repository row, so it goes when the repository does.
ALTER TABLE repositories ADD COLUMN deprecation TEXT;
-- A tag's notice belongs to the tag name, wherever the tag points.
CREATE TABLE tag_deprecations (
    repository_id INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (repository_id, tag)
) WITHOUT ROWID;
