"""The pure core: capabilities, policy, images, processes, audit records, units, schemas.

No I/O happens here (the image registry, which copies files, is the one exception
left; it moves out with the images service). Import the module you need; the package
does not import them eagerly, so the zygote's children load only what they use.
"""

__all__ = ["audit", "budgets", "caps", "image", "journal", "policy", "process", "registry",
           "schema", "text", "units"]
