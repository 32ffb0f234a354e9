"""The pure core: capabilities, policy, images, processes, audit records, units, schemas.

No I/O happens here beyond reading the image being loaded (the registry, which copies
and removes image directories, is ``agentlibos.registry``). Import the module you need;
the package does not import them eagerly, so the zygote's children load only what they
use.
"""

__all__ = ["audit", "caps", "image", "policy", "process", "schema", "units"]
