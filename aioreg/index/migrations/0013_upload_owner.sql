-- With server.workers > 1, the worker incarnation ("w<n>-<pid>") that holds an upload
-- session's running hash: the others forward the session's requests to it, or adopt the
-- session (re-hashing its acknowledged bytes once) when it is gone. NULL: no worker
-- (a single-process server, or a session from before).
ALTER TABLE uploads ADD COLUMN owner TEXT;
