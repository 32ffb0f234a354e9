-- 0002: the syscall journal (docs/store.md, "The journal").
-- One row per syscall of a process, in its order. status is 'ok' or 'error' (settled:
-- result is the reply, or the error as the wire encodes it), or 'intent' (an external
-- effect written before it acts; settled_at stays NULL until it is settled).
-- A rowid table, not WITHOUT ROWID: a result may be large (an fs.read reply), and
-- WITHOUT ROWID tables suit small rows only.
CREATE TABLE journal (
    pid        INTEGER NOT NULL,
    seq        INTEGER NOT NULL CHECK (seq >= 1),
    call       TEXT NOT NULL,
    digest     TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('ok', 'error', 'intent')),
    result     TEXT,
    created_at REAL NOT NULL,
    settled_at REAL,
    PRIMARY KEY (pid, seq)
);
-- Unsettled intents are what recovery looks for after a crash; few rows, so a partial index.
CREATE INDEX journal_intents ON journal (pid, seq) WHERE status = 'intent';
