-- Web console sign-in sessions, shared by every worker process and kept across restarts.
-- Only the sha256 of a session id is stored: reading the index never yields a cookie.
-- The identity is what rebuilds it (and what `still_valid` compares): the account, how
-- it signed in (a password, or the personal access token `token_id`, with its scopes)
-- and its credential generation then. user_id NULL: an anonymous visitor's session (a
-- form's CSRF token before sign-in), bounded apart from the signed-in ones.
-- flash: a value shown once on the next page (a new token, a webhook secret), sealed
-- with a key derived from the session id, so the index alone cannot read it.
CREATE TABLE console_sessions (
    id_hash BLOB PRIMARY KEY,
    anonymous INTEGER NOT NULL,
    csrf TEXT NOT NULL,
    user_id INTEGER REFERENCES users(id) ON DELETE CASCADE,
    user_name TEXT,
    is_admin INTEGER NOT NULL DEFAULT 0,
    method TEXT NOT NULL,
    token_id TEXT,
    scopes BLOB,
    generation INTEGER,
    created_at REAL NOT NULL,
    seen_at REAL NOT NULL,
    flash BLOB
) WITHOUT ROWID;
CREATE INDEX console_sessions_seen ON console_sessions(anonymous, seen_at);
CREATE INDEX console_sessions_user ON console_sessions(user_id);
