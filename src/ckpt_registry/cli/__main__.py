"""`python -m ckpt_registry.cli` runs the `ckpt` command."""

from .main import cli

cli()
