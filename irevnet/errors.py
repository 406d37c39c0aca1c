"""Errors that mean "bad input": the CLI prints their one-line message and exits with code 2."""

import reprlib

# Values from a file are shown through this in messages: a pickle can make a structure whose
# str() is exponentially long (a tuple holding itself twice, 40 levels deep), so str() is never
# called on them.
_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother = 2, 80, 80
_SHOWN.maxtuple = _SHOWN.maxlist = _SHOWN.maxdict = _SHOWN.maxset = _SHOWN.maxfrozenset = 4


def shown(value: object) -> str:
    """A short repr of a value read from an untrusted file, bounded in time and length; for an
    exception, its first line (or its arguments' short repr when they are not text)."""
    if isinstance(value, BaseException):
        if all(isinstance(a, str) for a in value.args):
            lines = str(value).strip().splitlines()
            return (lines[0] if lines else type(value).__name__)[:200]
        return f"{type(value).__name__}{_SHOWN.repr(value.args)}"
    return _SHOWN.repr(value)


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


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt, so that every `finally` runs and
    temporary files are removed (not an Exception: nothing may swallow it)."""


class CheckFailed(Exception):
    """A verification that ran and did not pass (CLI exit code 1)."""
