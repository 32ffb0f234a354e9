-- 0005: waiting (docs/approvals.md, docs/events.md).
-- asks: the human queue -- approvals of policy `ask` decisions (bound to the exact
-- request and a digest of the call's arguments) and agents' questions.
CREATE TABLE asks (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT NOT NULL CHECK (kind IN ('approval', 'question')),
    pid        INTEGER NOT NULL,
    root_pid   INTEGER NOT NULL,
    image      TEXT NOT NULL,
    call       TEXT NOT NULL,
    request    TEXT,
    question   TEXT,
    choices    TEXT,
    topic      TEXT,
    digest     TEXT NOT NULL,
    summary    TEXT NOT NULL,
    state      TEXT NOT NULL DEFAULT 'pending'
               CHECK (state IN ('pending', 'approved', 'denied', 'expired', 'answered')),
    always     INTEGER NOT NULL DEFAULT 0,
    answer     TEXT,
    reason     TEXT,
    created_at REAL NOT NULL,
    decided_at REAL
);
-- The queue view lists what is pending, oldest first: a partial index keeps that fast
-- with many decided rows.
CREATE INDEX asks_pending ON asks (id) WHERE state = 'pending';
CREATE INDEX asks_by_pid ON asks (pid);
-- events: every post, in order; a waiter receives the first post after its call began.
CREATE TABLE events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    name      TEXT NOT NULL,
    payload   TEXT NOT NULL,
    posted_by INTEGER,
    posted_at REAL NOT NULL
);
CREATE INDEX events_by_name ON events (name, id);
-- How each tree asks (prompt/queue/deny), and each process's standing approvals
-- (`approve --always`): capability patterns that an `ask` rule no longer stops.
ALTER TABLE processes ADD COLUMN ask_mode TEXT NOT NULL DEFAULT 'queue';
ALTER TABLE processes ADD COLUMN approved TEXT NOT NULL DEFAULT '[]';
