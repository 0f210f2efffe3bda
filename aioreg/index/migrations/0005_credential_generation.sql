-- a credential generation per user, which refresh and access tokens are bound to.
ALTER TABLE users ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
UPDATE users SET generation = (random() & 281474976710655);
