-- 0001: the schema of agentlibos 0.1.0, exactly as its SQLiteStore created it.
-- A database made by that code has these tables and meta.schema_version = '1'.
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS policies (
    id     INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    text   TEXT NOT NULL,
    UNIQUE (source, text)
);
CREATE TABLE IF NOT EXISTS processes (
    pid            INTEGER PRIMARY KEY AUTOINCREMENT,
    ppid           INTEGER,
    root_pid       INTEGER NOT NULL,
    host_pid       INTEGER,
    image          TEXT NOT NULL,
    image_path     TEXT NOT NULL,
    state          TEXT NOT NULL,
    exit_reason    TEXT,
    result         TEXT,
    error          TEXT,
    cwd            TEXT NOT NULL,
    args           TEXT NOT NULL,
    limits         TEXT NOT NULL,
    layers         TEXT NOT NULL DEFAULT '[]',
    missing_layers TEXT NOT NULL DEFAULT '[]',
    policy_id      INTEGER NOT NULL,
    created_at     REAL NOT NULL,
    started_at     REAL,
    ready_at       REAL,
    ended_at       REAL
);
CREATE INDEX IF NOT EXISTS processes_ppid ON processes (ppid);
CREATE INDEX IF NOT EXISTS processes_state ON processes (state);
CREATE TABLE IF NOT EXISTS capabilities (
    pid  INTEGER NOT NULL,
    cap  TEXT NOT NULL,
    PRIMARY KEY (pid, cap)
);
CREATE TABLE IF NOT EXISTS objects (
    ns         TEXT NOT NULL,
    name       TEXT NOT NULL,
    type       TEXT NOT NULL,
    version    INTEGER NOT NULL,
    value      TEXT NOT NULL,
    size       INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    updated_by INTEGER,
    PRIMARY KEY (ns, name)
);
CREATE TABLE IF NOT EXISTS images (
    name          TEXT PRIMARY KEY,
    version       TEXT NOT NULL,
    path          TEXT NOT NULL,
    description   TEXT NOT NULL,
    registered_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq     INTEGER PRIMARY KEY,
    ts      REAL NOT NULL,
    pid     INTEGER,
    call    TEXT NOT NULL,
    request TEXT NOT NULL,
    verdict TEXT NOT NULL,
    detail  TEXT NOT NULL,
    prev    TEXT NOT NULL,
    hash    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_pid ON audit (pid);
