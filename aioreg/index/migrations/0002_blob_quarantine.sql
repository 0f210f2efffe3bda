-- scrub can quarantine a blob whose bytes no longer match its digest.
ALTER TABLE blobs ADD COLUMN quarantined_at REAL;
