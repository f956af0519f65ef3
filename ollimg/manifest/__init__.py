"""Model names, OCI manifests and the manifest store. Must not import httpx, fastapi, rich, torch or mlx."""

from ollimg.manifest.manifest import Descriptor, Manifest
from ollimg.manifest.name import Name
from ollimg.manifest.store import Model, Store

__all__ = ["Descriptor", "Manifest", "Model", "Name", "Store"]
