"""The pure core: capabilities, policy, images, processes, audit records, units, schemas,
journal records, budgets, token budgets, text safety.

No I/O happens here. Import the module you need; the package does not import them
eagerly, so the zygote's children load only what they use.
"""

__all__ = ["audit", "budgets", "caps", "image", "journal", "policy", "process", "schema",
           "text", "tokens", "units"]
