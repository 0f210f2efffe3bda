-- Webhooks: endpoints, the durable outbox of events (written in the transaction of the
-- change each reports), one delivery per (event, endpoint) and every attempt made.
CREATE TABLE webhook_endpoints (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace TEXT,  -- NULL: registry-wide
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    events TEXT NOT NULL,  -- JSON list of event kinds; empty: every kind
    repository_pattern TEXT NOT NULL,  -- glob over repository names
    media_types TEXT NOT NULL,  -- JSON list; empty: any
    format TEXT NOT NULL,  -- cloudevents | distribution
    enabled INTEGER NOT NULL,
    created_at REAL NOT NULL,
    source TEXT NOT NULL DEFAULT 'api'  -- api (added by API or CLI) | config ([[webhook]])
);
CREATE TABLE webhook_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- the order events happened in, never reused
    uid TEXT NOT NULL,  -- the event id receivers see (idempotency key)
    at REAL NOT NULL,
    action TEXT NOT NULL,
    repository TEXT NOT NULL,
    tag TEXT,
    digest TEXT,
    media_type TEXT,
    size INTEGER,
    actor TEXT,
    request_id TEXT,
    detail TEXT,  -- JSON object of action-specific facts
    dispatched INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX webhook_events_undispatched ON webhook_events(id) WHERE dispatched = 0;
CREATE TABLE webhook_deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint_id INTEGER NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
    event_id INTEGER NOT NULL REFERENCES webhook_events(id) ON DELETE CASCADE,
    state TEXT NOT NULL,  -- pending | delivered | dead
    attempts INTEGER NOT NULL DEFAULT 0,  -- since queued or redelivered (drives the backoff)
    next_at REAL NOT NULL,
    created_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries(endpoint_id, id)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_event ON webhook_deliveries(event_id);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries(endpoint_id, id);
CREATE TABLE webhook_attempts (
    id INTEGER PRIMARY KEY,
    delivery_id INTEGER NOT NULL REFERENCES webhook_deliveries(id) ON DELETE CASCADE,
    at REAL NOT NULL,
    status INTEGER,  -- the receiver's HTTP status; NULL when none came
    latency REAL NOT NULL,
    error TEXT
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts(delivery_id);
