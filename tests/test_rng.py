"""Random streams: each (seed, *key) its own stream, every bit of the seed and key counting (issue 15)."""

import numpy as np
import pytest
import torch

from intrs.noise import GaussianNoise
from intrs.rng import STAGE_ESTIMATE, STAGE_INIT, STAGE_SELECT, _mt_words, random_stream, seed_torch, stream_seed
from intrs.smoothing import SmoothedClassifier

# Their 64-bit stream seeds agree in the low 32 bits, all that torch's manual_seed keeps: they drew the same noise.
SHARED = ((0, 36122, STAGE_SELECT), (0, 65131, STAGE_ESTIMATE))


def first_draw(generator: torch.Generator) -> int:
    """The stream's first two 32-bit outputs as one integer (torch's 64-bit draw, reduced mod 2^64 - 1)."""
    return int(torch.randint(-2 ** 63, 2 ** 63 - 1, (1,), generator=generator))


class Recording:
    """A base classifier that keeps every noisy batch it is shown and votes class 0."""

    def __init__(self):
        self.batches = []

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.batches.append(batch.clone())
        return torch.zeros(len(batch), dtype=torch.int64)


def test_streams_whose_seeds_agree_in_the_low_32_bits_differ():
    (a, b) = SHARED
    assert stream_seed(*a) & 0xFFFFFFFF == stream_seed(*b) & 0xFFFFFFFF
    assert not torch.equal(torch.randn(1000, generator=random_stream(*a)), torch.randn(1000, generator=random_stream(*b)))
    for seed in (0, 12345, 2 ** 32 - 1):
        for key in ((), (7, STAGE_SELECT)):
            assert first_draw(random_stream(seed, *key)) != first_draw(random_stream(seed + 2 ** 32, *key))
            assert first_draw(random_stream(seed, *key)) != first_draw(random_stream(seed + 2 ** 63, *key))


def test_certify_selection_and_estimation_noise_of_two_images_differ():
    """CERTIFY of image 36122 and of image 65131 (seed 0): the first's selection noise was the second's
    estimation noise with the 32-bit seeding."""
    base, pixels = Recording(), torch.full((3, 4, 4), 128, dtype=torch.uint8)
    smoothed = SmoothedClassifier(base, GaussianNoise(0.25), 2, batch_size=64)
    smoothed.certify(pixels, 64, 64, 0.01, seed=0, idx=36122)
    smoothed.certify(pixels, 64, 64, 0.01, seed=0, idx=65131)
    selection_36122, estimation_65131 = base.batches[0], base.batches[3]
    assert not torch.equal(selection_36122, estimation_65131)
    assert not torch.equal(base.batches[0], base.batches[1])  # an image's own selection and estimation


def test_distinct_keys_give_distinct_streams_over_a_large_sample():
    """Distinct by construction (``_mt_words`` writes (seed, len(key), *key) into the state); here 60,000
    streams of selection and estimation, the colliding pair among them, start with distinct draws."""
    firsts = {first_draw(random_stream(0, idx, stage)) for idx in range(36_000, 66_000)
              for stage in (STAGE_SELECT, STAGE_ESTIMATE)}
    assert len(firsts) == 60_000
    # Keys that differ only in their length, and the extremes of the range, are distinct states too.
    states = [_mt_words(*k)[1:] for k in ((0,), (0, 0), (0, 0, 0), (2 ** 64 - 1, 2 ** 64 - 1), (2 ** 64 - 1,))]
    assert len({s.tobytes() for s in states}) == len(states)
    for bad in ((-1,), (0, 2 ** 64), (2 ** 64,)):
        with pytest.raises(ValueError):
            random_stream(*bad)


def test_streams_are_mt19937_set_to_their_words():
    """torch's generator after set_state is MT19937 with exactly ``_mt_words`` (numpy's MT19937 as the
    reference), so the injectivity argument is about the generator that draws the noise."""
    for key in ((3,), (0, 36122, STAGE_SELECT), (2 ** 64 - 1, 5, 2 ** 40)):
        drawn = torch.randint(0, 2 ** 62, (2000,), generator=random_stream(*key)).numpy().astype(np.uint64)
        reference = np.random.MT19937()
        reference.state = {"bit_generator": "MT19937", "state": {"key": _mt_words(*key), "pos": 624}}
        words = reference.random_raw(4000).astype(np.uint64)  # torch's 64-bit draw: two words, the first high
        assert np.array_equal(drawn, (words[0::2] << np.uint64(32) | words[1::2]) % np.uint64(2 ** 62))


def test_seed_torch_sets_the_global_generator_to_the_stream():
    before = torch.get_rng_state()
    try:
        seed_torch(2 ** 40 + 1, STAGE_INIT)
        drawn = torch.randn(100)
    finally:
        torch.set_rng_state(before)
    assert torch.equal(drawn, torch.randn(100, generator=random_stream(2 ** 40 + 1, STAGE_INIT)))
