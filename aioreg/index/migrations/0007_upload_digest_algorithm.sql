-- An upload session hashes with the algorithm its POST named (?digest-algorithm=), and
-- keeps it across a restart: resuming rehashes the acknowledged bytes with the same one.
-- NULL: none named; the session hashes sha256 and a digest in another algorithm is
-- checked by hashing the file once more.
ALTER TABLE uploads ADD COLUMN digest_algorithm TEXT;
