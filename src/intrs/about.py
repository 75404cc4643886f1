"""Which intrs made a file: the package version, the git commit of a source checkout, and the date.

Recorded by runs (a reproduction's preset.json) and printed by reports, so a table can be traced to the code
that produced it.
"""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path


def commit() -> str:
    """The checkout's commit (with "+changes" when the tree differs from it), or "unknown" for an installed
    package or a machine without git."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no", "."],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}+changes" if dirty else head


def software() -> dict:
    """{"intrs": version, "commit": ..., "date": ISO date and time in UTC}."""
    from . import __version__

    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    return {"intrs": __version__, "commit": commit(), "date": now.isoformat()}
