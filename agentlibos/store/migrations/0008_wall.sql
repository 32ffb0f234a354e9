-- 0008: `[limits] wall` counted over a process's whole life on host processes.
-- wall_used: seconds of wall-clock time its earlier host processes ran (each stretch
-- from a start or resume to an eviction or a supervisor's stop). stretch_at: the Unix
-- time the current stretch began, NULL while it has no host process; a stretch a crash
-- cut short is counted at the next resume up to the process's last audit record.
ALTER TABLE processes ADD COLUMN wall_used REAL NOT NULL DEFAULT 0;
ALTER TABLE processes ADD COLUMN stretch_at REAL;
