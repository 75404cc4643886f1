"""Seeded random streams: every random draw in intrs flows from one user seed.

A stream is named by a key, e.g. (image index, stage) for certification or
(epoch,) for training, so a piece of work re-runs alone, in any order and on any
worker, with the same draws. ``device_stream`` gives the stream on a torch device: the CPU's is
``random_stream``'s, a CUDA device's a Philox generator seeded from the same key (docs/gpu.md).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

# Stages: each gets an independent stream for the same image or epoch.
STAGE_SELECT, STAGE_ESTIMATE, STAGE_PREDICT, STAGE_TRAIN, STAGE_EVAL, STAGE_INIT = range(6)

_WORD = 2 ** 64
# torch's CPU generator is MT19937; its state (get_state) is the seed, `left`, `seeded` and `next` in 24
# bytes, then the 624 32-bit state words, each stored as a uint64, then the cached normal samples.
_MT_WORDS, _WORDS_AT = 624, 24


def _check_words(seed: int, key: tuple) -> tuple[int, ...]:
    words = (int(seed), *(int(k) for k in key))
    if not all(0 <= w < _WORD for w in words):
        raise ValueError(f"a seed and its stream key must be integers in [0, 2^64), got {words}")
    return words


def check_seed(seed) -> int:
    """A user's root seed: an integer in [0, 2^64) (every stream is derived from its 64 bits), else a
    ``ConfigError``."""
    from .errors import ConfigError

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < _WORD:
        raise ConfigError(f"--seed must be an integer in [0, 2^64), got {seed!r}")
    return int(seed)


def stream_seed(seed: int, *key: int) -> int:
    """64 well-mixed bits for (seed, *key) from numpy's SeedSequence (neighbouring keys stay unrelated).

    A hash: two distinct keys collide with probability 2^-64 (the lattice noises' PCG64 streams are
    seeded with it); ``random_stream`` gives torch streams that cannot collide."""
    state = np.random.SeedSequence(entropy=int(seed), spawn_key=tuple(int(k) for k in key)).generate_state(2, np.uint32)
    return int(state[0]) << 32 | int(state[1])


@lru_cache(maxsize=1)
def _state_template() -> torch.Tensor:
    """A seeded torch CPU generator state, its layout checked: after manual_seed(s) its words are
    MT19937's init_genrand(s) (numpy's RandomState(s) key) and left = 1, seeded = 1, next = 0."""
    state = torch.Generator().manual_seed(5489).get_state()
    raw = state.numpy()
    words = raw[_WORDS_AT:_WORDS_AT + 8 * _MT_WORDS]
    if (len(words) != 8 * _MT_WORDS or raw[8:_WORDS_AT].tolist() != [1, 0, 0, 0, 1] + [0] * 11
            or not np.array_equal(words.view(np.uint64), np.random.RandomState(5489).get_state()[1])):
        raise RuntimeError(f"torch {torch.__version__}: its CPU generator state is not the MT19937 layout "
                           "intrs seeds (see intrs.rng)")
    return state


def _mt_words(seed: int, *key: int) -> np.ndarray:
    """MT19937's 624 state words for the stream (seed, *key).

    Words 1.. hold (seed, len(key), *key) as pairs of 32-bit halves, so distinct (seed, *key) give
    distinct states (word 0 is the only one MT19937 reads partly, by its top bit), and distinct states
    give distinct streams: MT19937's update is a bijection of its state, and its first 624 outputs
    determine the state. The other words are PCG64 words seeded with SeedSequence's hash of (seed, *key),
    so the outputs are well mixed from the first draw (SeedSequence.generate_state of 624 words
    directly costs 10x more). Keys of up to 309 entries fit.
    """
    words = _check_words(seed, key)
    encoded = [half for w in (words[0], len(key), *words[1:]) for half in (w & 0xFFFFFFFF, w >> 32)]
    if 1 + len(encoded) > _MT_WORDS:
        raise ValueError(f"a stream key has at most {(_MT_WORDS - 5) // 2} entries, got {len(key)}")
    hashed = np.random.SeedSequence(entropy=words[0], spawn_key=words[1:])
    state = np.random.PCG64(hashed).random_raw(_MT_WORDS // 2).view(np.uint32)
    state[1:1 + len(encoded)] = encoded
    return state


def random_stream(seed: int, *key: int) -> torch.Generator:
    """A torch generator for the stream (seed, *key): MT19937 set to ``_mt_words(seed, *key)``.

    Every bit of the 64-bit seed and of each key entry counts, and distinct (seed, *key) give distinct
    streams by construction. (``manual_seed`` would not do: torch's MT19937 keeps only the seed's low
    32 bits, so stream seeds agreeing there shared their noise, e.g. (0, 36122, STAGE_SELECT) and
    (0, 65131, STAGE_ESTIMATE), issue 15.)
    """
    words = _mt_words(seed, *key)
    state = _state_template().clone()
    raw = state.numpy()
    raw[:8].view(np.uint64)[0] = int(seed)  # what initial_seed() reports
    raw[_WORDS_AT:_WORDS_AT + 8 * _MT_WORDS].view(np.uint64)[:] = words
    generator = torch.Generator()
    generator.set_state(state)  # left = 1 in the template: the first draw regenerates the words first
    return generator


def seed_torch(seed: int, *key: int) -> None:
    """Sets torch's global CPU generator (what model initialisation draws from) to the stream (seed, *key)."""
    torch.default_generator.set_state(random_stream(seed, *key).get_state())


def philox_seed_offset(seed: int, *key: int) -> tuple[int, int]:
    """The (seed, offset) of a Philox generator (torch's CUDA generator) for the stream (seed, *key).

    128 bits of numpy's SeedSequence hash of (seed, *key): the first 64 are the Philox key
    (``stream_seed``'s, which CUDA's ``manual_seed`` keeps whole), the next 62, times 4, the counter
    offset (``set_offset`` wants a multiple of 4). Every bit of the seed and of each key entry counts;
    unlike the CPU's MT19937 states, two streams are not distinct by construction: a pair shares its key
    with probability 2^-64, and then overlaps only if their offsets lie closer than the words drawn.
    """
    words = _check_words(seed, key)
    state = np.random.SeedSequence(entropy=words[0], spawn_key=words[1:]).generate_state(4, np.uint32)
    key64 = int(state[0]) << 32 | int(state[1])
    offset = (int(state[2]) << 32 | int(state[3])) >> 2
    return key64, 4 * offset


def device_stream(device, seed: int, *key: int) -> torch.Generator:
    """A torch generator on ``device`` for the stream (seed, *key): the same draws for the same key on the
    same device. The CPU's is ``random_stream``'s MT19937; a CUDA device's is Philox at
    ``philox_seed_offset(seed, *key)``. Float draws from the two differ: a GPU's noise is its own."""
    device = torch.device(device)
    if device.type == "cpu":
        return random_stream(seed, *key)
    seed64, offset = philox_seed_offset(seed, *key)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed64)
    generator.set_offset(offset)
    return generator
