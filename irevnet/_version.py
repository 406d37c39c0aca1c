"""The release number, in a module that imports nothing (read by packaging and by every writer)."""

__version__ = "0.1.0"
