-- 0007: durable execution (docs/durability.md).
-- resumes: how many times a process was resumed after a crash (bounded by its image's
-- [lifecycle] max_resumes). attention: while state = 'attention', the external effect a
-- crash left unsettled, as JSON {"seq", "call", "request"}; NULL otherwise.
ALTER TABLE processes ADD COLUMN resumes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE processes ADD COLUMN attention TEXT;
-- A checkpoint: a process's journal position, its own objects and its capabilities at
-- that point. `restore` starts a new process that replays to seq and then runs live.
CREATE TABLE checkpoints (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT,
    pid        INTEGER NOT NULL,
    seq        INTEGER NOT NULL CHECK (seq >= 0),
    caps       TEXT NOT NULL,
    objects    TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX checkpoints_name ON checkpoints (name, id);
CREATE INDEX checkpoints_pid ON checkpoints (pid, id);
-- The states recovery looks for at start.
CREATE INDEX processes_attention ON processes (pid) WHERE state = 'attention';
