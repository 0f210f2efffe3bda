-- When a proxy last checked a cached tag against its upstream (wall-clock seconds), so
-- revalidation intervals hold across restarts; NULL for hosted tags and never-checked ones.
ALTER TABLE tags ADD COLUMN validated_at REAL;
