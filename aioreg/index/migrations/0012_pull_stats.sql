-- pull statistics: totals per repository, tag and manifest, and pulls per day.
ALTER TABLE repositories ADD COLUMN pull_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE manifests ADD COLUMN pull_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tags ADD COLUMN pull_count INTEGER NOT NULL DEFAULT 0;
-- Pulls of a repository per UTC day (days since 1970-01-01) and per tag; '' is pulls
-- by digest. Kept for events.max_age_days; the totals above are kept for good.
CREATE TABLE pull_days (
    repository_id INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    day INTEGER NOT NULL,
    pulls INTEGER NOT NULL,
    PRIMARY KEY (repository_id, tag, day)
) WITHOUT ROWID;
CREATE INDEX pull_days_day ON pull_days(day);
