"""The ``bandstore`` command: parses arguments and calls the library, nothing more."""

from bandstore.cli.main import main

__all__ = ["main"]
