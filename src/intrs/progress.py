"""Progress reporting without printing: long library calls take a tqdm-like wrapper.

The library never prints; the CLI passes ``tqdm.tqdm``, a notebook user may pass
``tqdm.auto.tqdm``, and the default shows nothing.
"""

from __future__ import annotations

from typing import Callable, Iterable

Progress = Callable[..., Iterable]
"""progress(iterable, total=..., desc=..., unit=...) -> the same items."""


def no_progress(iterable: Iterable, **_: object) -> Iterable:
    return iterable
