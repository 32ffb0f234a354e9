-- 0006: token budgets for model calls (agentlibos/kernel/tokens.py; docs/models.md).
-- Kept on the tree root's row like the other tree budgets (0004): the limit the tree
-- runs under (NULL: none set by `run --tokens`; the root image's [limits] tokens is
-- recorded here at the tree's first model call) and what it has spent, settled after
-- each call. Reservations of calls in flight live in the supervisor's memory only: a
-- call does not outlive the supervisor that sent it.
ALTER TABLE processes ADD COLUMN tree_tokens_limit INTEGER CHECK (tree_tokens_limit >= 0);
ALTER TABLE processes ADD COLUMN tree_tokens_used INTEGER NOT NULL DEFAULT 0
    CHECK (tree_tokens_used >= 0);
ALTER TABLE processes ADD COLUMN tree_prompt_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE processes ADD COLUMN tree_completion_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE processes ADD COLUMN tree_model_calls INTEGER NOT NULL DEFAULT 0;
