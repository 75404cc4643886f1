"""The errors a user can cause.

Every mistake a user can make (a missing file, a bad flag value, a checkpoint
for another data set) raises an ``IntrsError`` subclass whose message says what
was wrong and how to fix it. The library never prints or exits; the CLI turns
these into one line on stderr and exit status 2.
"""


class IntrsError(Exception):
    """Base class of every error intrs raises for bad input."""


class DataError(IntrsError):
    """A data folder or file is missing, empty, corrupt or of the wrong layout."""


class CheckpointError(IntrsError):
    """A checkpoint or model file is missing, corrupt, foreign or mismatched."""


class ConfigError(IntrsError):
    """A parameter value is out of its domain (sigma <= 0, alpha outside (0, 1), ...)."""


class OutputExistsError(IntrsError):
    """An output file already exists and would be overwritten."""
