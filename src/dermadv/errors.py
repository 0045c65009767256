"""One exception family, turned by the CLI into a one-line message."""


class DermadvError(Exception):
    """Base class: the message says what is wrong, where, and the fix."""


class DataError(DermadvError):
    """Bad or missing input data (CSV, images, splits)."""


class CheckpointError(DermadvError):
    """A checkpoint that cannot be read or does not fit the data."""


class ConfigError(DermadvError):
    """An option value out of range or inconsistent with another."""


class RunError(DermadvError):
    """A run folder that is missing parts or cannot be resumed."""


class ModelError(DermadvError):
    """A model (file, export or endpoint) that cannot be loaded or answers badly."""


class DivergedError(DermadvError):
    """Training or fitting whose loss or weights became NaN or infinite."""
