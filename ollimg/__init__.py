"""ollimg: run text-to-image models locally."""

__version__ = "0.1.0"
