-- 0004: per-tree budgets (agentlibos/kernel/budgets.py; docs/sandbox.md, "Tree quotas").
-- objects.root_pid: the process tree an object's bytes are charged to, the tree of its
-- last writer; NULL when nobody is charged (the operator wrote it).
ALTER TABLE objects ADD COLUMN root_pid INTEGER;
-- What each tree holds (object_bytes, objects) and has spent (write_bytes), kept in the
-- same transaction as the put, delete or write that changes it. A tree with no row has
-- used nothing.
CREATE TABLE tree_usage (
    root_pid     INTEGER PRIMARY KEY,
    object_bytes INTEGER NOT NULL DEFAULT 0 CHECK (object_bytes >= 0),
    objects      INTEGER NOT NULL DEFAULT 0 CHECK (objects >= 0),
    write_bytes  INTEGER NOT NULL DEFAULT 0 CHECK (write_bytes >= 0)
);
-- Objects written before budgets existed are charged to their last writer's tree, so
-- the usage starts out true; what the operator wrote (updated_by NULL) stays uncharged.
UPDATE objects SET root_pid = (
    SELECT p.root_pid FROM processes AS p WHERE p.pid = objects.updated_by
);
INSERT INTO tree_usage (root_pid, object_bytes, objects)
    SELECT root_pid, SUM(size), COUNT(*) FROM objects WHERE root_pid IS NOT NULL
    GROUP BY root_pid;
