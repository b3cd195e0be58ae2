"""The command line (the only layer that imports typer, rich or matplotlib): ``app`` is the
Typer app, ``main`` the console script ``genentropy``."""

from genentropy_cli.cli.app import app, main

__all__ = ["app", "main"]
