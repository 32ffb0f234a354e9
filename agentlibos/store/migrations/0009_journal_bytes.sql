-- 0009: the journal_bytes tree quota (agentlibos/kernel/budgets.py; docs/sandbox.md,
-- "Tree quotas"): the bytes of answers the journal kept whole for a tree, on its root's
-- row like the other tree amounts (zero on every other row).
ALTER TABLE processes ADD COLUMN tree_journal_bytes INTEGER NOT NULL DEFAULT 0
    CHECK (tree_journal_bytes >= 0);
-- What the journal already holds counts, so an existing tree's meter starts out true:
-- settled answers over 1 KiB (JOURNAL_SMALL), of every process of the tree.
UPDATE processes SET tree_journal_bytes = (
    SELECT COALESCE(SUM(LENGTH(CAST(j.result AS BLOB))), 0)
    FROM journal AS j JOIN processes AS p ON p.pid = j.pid
    WHERE p.root_pid = processes.pid AND j.status IN ('ok', 'error')
      AND LENGTH(CAST(j.result AS BLOB)) > 1024
) WHERE pid = root_pid;
