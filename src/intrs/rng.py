"""Seeded random streams: every random draw in intrs flows from one user seed.

A stream is named by a key, e.g. (image index, stage) for certification or
(epoch,) for training, so a piece of work re-runs alone, in any order and on any
worker, with the same draws.
"""

from __future__ import annotations

import numpy as np
import torch

# Stages: each gets an independent stream for the same image or epoch.
STAGE_SELECT, STAGE_ESTIMATE, STAGE_PREDICT, STAGE_TRAIN, STAGE_EVAL, STAGE_INIT = range(6)


def stream_seed(seed: int, *key: int) -> int:
    """64 well-mixed bits for (seed, *key) from numpy's SeedSequence (neighbouring keys stay unrelated)."""
    state = np.random.SeedSequence(entropy=int(seed), spawn_key=tuple(int(k) for k in key)).generate_state(2, np.uint32)
    return int(state[0]) << 32 | int(state[1])


def random_stream(seed: int, *key: int) -> torch.Generator:
    """A torch generator for the stream (seed, *key)."""
    generator = torch.Generator()
    generator.manual_seed(stream_seed(seed, *key))
    return generator
