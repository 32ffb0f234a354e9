-- 0004: per-tree budgets (agentlibos/kernel/budgets.py; docs/sandbox.md, "Tree quotas").
-- objects.root_pid: the process tree an object's bytes are charged to, the tree of its
-- last writer; NULL when nobody is charged (the operator wrote it).
ALTER TABLE objects ADD COLUMN root_pid INTEGER;
-- What a tree holds (object bytes, objects) and has spent (bytes written through the
-- broker), kept on its root's row (pid = root_pid; zero on every other row) and
-- changed in the same transaction as the put, delete or write it counts. On the root's
-- row, not a table of its own: a tree is exactly as durable as its root's record.
ALTER TABLE processes ADD COLUMN tree_object_bytes INTEGER NOT NULL DEFAULT 0
    CHECK (tree_object_bytes >= 0);
ALTER TABLE processes ADD COLUMN tree_objects INTEGER NOT NULL DEFAULT 0
    CHECK (tree_objects >= 0);
ALTER TABLE processes ADD COLUMN tree_write_bytes INTEGER NOT NULL DEFAULT 0
    CHECK (tree_write_bytes >= 0);
-- Objects written before budgets existed are charged to their last writer's tree, so
-- the usage starts out true; what the operator wrote (updated_by NULL) stays uncharged.
UPDATE objects SET root_pid = (
    SELECT p.root_pid FROM processes AS p WHERE p.pid = objects.updated_by
);
UPDATE processes SET
    tree_object_bytes = (SELECT COALESCE(SUM(o.size), 0) FROM objects AS o
                         WHERE o.root_pid = processes.pid),
    tree_objects = (SELECT COUNT(*) FROM objects AS o WHERE o.root_pid = processes.pid)
WHERE pid = root_pid;
