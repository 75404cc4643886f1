"""Output files: checked before the work starts, written whole or not at all.

Every file intrs writes in one piece (checkpoints, integer models, settings,
tables, figures, reports) goes through :func:`write_atomically`: a temporary file
beside the target, fsynced, then renamed over it, so a full disk or a crash
leaves the previous file or none, never a torn or empty one, and no temporary
behind. :func:`check_output` finds an unwritable location before a long run
starts instead of after it. Torch-free: the command line checks outputs before
importing torch.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable, IO

from .errors import OutputError


def describe_os_error(exc: BaseException) -> str:
    """An OSError's reason in a few words (its strerror), or the first line of another exception's text.

    torch.save reports a full disk as a RuntimeError ("... file write failed"), hence the fallback."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output(path: str | Path, *, folder: bool = False, flag: str = "--out") -> Path:
    """Raise an ``OutputError`` now if ``path`` (a file, or with ``folder`` a folder) could not be written.

    Missing folders on the way are fine (writers create them); a folder where a file
    is wanted, a file where a folder is, or a location the user may not write are
    refused, by trying to create a file in the nearest existing folder (permission
    bits alone say nothing for root or read-only mounts). Nothing is left behind."""
    path = Path(path)
    if path.exists():
        if folder and not path.is_dir():
            raise OutputError(f"{flag} {path} is a file, not a folder: choose a folder")
        if not folder and path.is_dir():
            raise OutputError(f"{flag} {path} is a folder: give the name of a file (inside it, or elsewhere)")
    existing = _nearest_existing(path if folder else path.parent)
    if not existing.is_dir():
        raise OutputError(f"{flag} {path} cannot be created: {existing} is a file, not a folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=".intrs-probe-", dir=existing)
    except OSError as exc:
        raise OutputError(f"{flag} {path} cannot be written: {existing} is not writable "
                          f"({describe_os_error(exc)})") from None
    os.close(handle)
    os.unlink(probe)
    return path


def temporary_path(path: Path) -> Path:
    """Where ``write_atomically`` writes before renaming: hidden, beside the target, this process's own."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_atomically(path: str | Path, write: Callable[[IO], None], *, text: bool = False) -> Path:
    """Write ``path`` whole or not at all: ``write(handle)`` fills a temporary file, which is fsynced and
    renamed over ``path``; on any failure the temporary is removed and an ``OutputError`` names the file
    and the reason (e.g. "No space left on device")."""
    path = Path(path)
    tmp = temporary_path(path)
    recording = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w" if text else "wb", **({"encoding": "utf-8", "newline": ""} if text else {})) as handle:
            recording = _Recording(handle)
            write(recording)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # RuntimeError: torch.save's report of a failed write
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(exc, IsADirectoryError) or path.is_dir():
            raise OutputError(f"cannot write {path}: it is a folder") from None
        cause = recording.error if recording is not None and recording.error is not None else exc
        raise OutputError(f"cannot write {path}: {describe_os_error(cause)}") from None
    _sync_folder(path.parent)
    return path


class _Recording:
    """A file handle as a writer sees it, keeping the first OSError of a write: torch.save swallows it and
    raises "[enforce fail at inline_container.cc] unexpected pos" instead, which says nothing to a user."""

    def __init__(self, handle: IO):
        self._handle, self.error = handle, None

    def write(self, data):
        try:
            return self._handle.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def __getattr__(self, name: str):
        return getattr(self._handle, name)


def write_text_atomically(path: str | Path, content: str) -> Path:
    """``content`` into ``path`` through :func:`write_atomically` (UTF-8, "\\n" line endings kept as given)."""
    return write_atomically(path, lambda handle: handle.write(content), text=True)


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable where the file system allows (the file's data already is)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, hex: what a run's settings record of each model it used."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
