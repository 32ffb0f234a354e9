-- 0003: what a waiting process waits on (`proc:7`, `approval:12`, `event:NAME`,
-- `sleep:ISO-TIME`), and whether it has been evicted (stopped while it waits, to be
-- resumed by replay when the wait ends). Shown by `ps`.
ALTER TABLE processes ADD COLUMN wait TEXT;
ALTER TABLE processes ADD COLUMN evicted INTEGER NOT NULL DEFAULT 0;
