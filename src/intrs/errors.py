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


class MissingDependencyError(IntrsError):
    """An optional package a command needs is not installed; the message names the extra to install."""


# The optional packages and the extra of intrs that installs each (pyproject.toml's optional-dependencies).
OPTIONAL_PACKAGES = {"flatbuffers": "export", "ai_edge_litert": "export", "onnx": "export", "onnxruntime": "export",
                     "matplotlib": "report", "ray": "ray"}


def missing_dependency(error: ModuleNotFoundError) -> MissingDependencyError | None:
    """The user error for an optional package that is not installed (naming the extra that installs it), or
    None where the missing module is not one of them (a broken install: the traceback then tells more)."""
    top = (error.name or "").split(".")[0]
    if top not in OPTIONAL_PACKAGES:
        return None
    extra = OPTIONAL_PACKAGES[top]
    return MissingDependencyError(f"this needs the optional package {top!r}, which is not installed: "
                                  f"pip install 'intrs[{extra}]'")


class OutputError(IntrsError):
    """An output cannot be written: an unwritable or misnamed location, or a full disk."""
