"""Error types with one-line messages, shown by the command line without a traceback."""
from __future__ import annotations


class FAPMError(Exception):
    """Base class: a problem the user can fix, described in one line."""


class DataError(FAPMError):
    """Unreadable image, missing mask, empty split, bad data root or category."""


class ConfigError(FAPMError):
    """Unknown config key, wrong type, or a parameter out of range."""


class ModelFileError(FAPMError):
    """A model file that is truncated, tampered with, or of another format."""


class BackboneError(FAPMError):
    """A backbone that cannot be built or whose weights cannot be loaded."""
