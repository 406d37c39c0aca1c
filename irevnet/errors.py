"""Errors that mean "bad input": the CLI prints their one-line message and exits with code 2."""


class IRevNetError(Exception):
    """Base class; the message names the problem and the fix, in one line."""


class ConfigError(IRevNetError, ValueError):
    """An architecture that the i-RevNet construction cannot build."""


class CheckpointError(IRevNetError):
    """A checkpoint that cannot be read."""


class DatasetError(IRevNetError):
    """A dataset spec or folder that cannot be read."""


class BundleError(IRevNetError):
    """An exported bundle that is incomplete, tampered with or from a newer irevnet."""


class CheckFailed(Exception):
    """A verification that ran and did not pass (CLI exit code 1)."""
