"""ckpt-registry: a self-hostable model checkpoint registry speaking the W&B Training checkpoint API."""

__version__ = "0.1.0"
