"""Pull and push models through any OCI registry (the distribution API over httpx).

Must not import rich, fastapi, torch or mlx; `blobs/` and `manifest/` never import this.
"""

from ollimg.registry.login import login, logout
from ollimg.registry.pull import pull
from ollimg.registry.push import push

__all__ = ["login", "logout", "pull", "push"]
