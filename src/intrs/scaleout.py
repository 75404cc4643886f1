"""Certification sharded on Ray: images spread over workers, rows back in idx order.

Each worker is a Ray actor that receives the system (noise law and base
classifier) once and certifies single images; Ray restarts a killed worker and
retries its image. Every image draws from its own (seed, idx) streams, so a row
computed on any worker is the row the local run computes (the time column aside).
The driver writes rows in idx order through the same crash-safe writer as a
local run, so a killed driver resumes with ``--resume``.
"""

from __future__ import annotations

import os
from typing import Iterator

import torch

from .certification import ROW_FUNCTIONS, CertifySettings
from .data import ImageSet
from .errors import ConfigError
from .systems import System


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray: pip install 'ray>=2.9'") from None
    return ray


MAX_RESTARTS = 4  # a killed worker is restarted (reloading the system) and its image retried, this many times


class _Worker:
    """One Ray actor: the system loaded once, then one image per call."""

    def __init__(self, system: System, batch_size: int, threads: int):
        torch.set_num_threads(threads)
        self.system, self.smoothed = system, system.smoothed(batch_size)

    def row(self, mode: str, settings: CertifySettings, idx: int, pixels: torch.Tensor, label: int) -> dict:
        return ROW_FUNCTIONS[mode](self.system, self.smoothed, pixels, label, idx, settings)


class RayExecutor:
    """Computes rows on Ray workers: a local instance by default, an existing cluster given its address."""

    def __init__(self, address: str | None = None, workers: int | None = None):
        if workers is not None and workers < 1:  # refused before Ray starts, not after (0 is no default)
            raise ConfigError(f"--workers must be at least 1, got {workers}")
        self.address, self.workers = address, workers

    def _start(self):
        ray = _ray()
        if not ray.is_initialized():
            try:
                if self.address:
                    ray.init(address=self.address, log_to_driver=False)
                else:
                    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
            except (ValueError, ConnectionError, RuntimeError, TimeoutError) as exc:
                # e.g. a ray:// address without the ray[client] package, or no cluster listening there
                reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
                raise ConfigError(f"cannot start Ray at {self.address or 'a local instance'}: {reason}") from None
        cpus = int(ray.cluster_resources().get("CPU", 1))
        workers = cpus if self.workers is None else self.workers
        return ray, workers, max(1, cpus // workers)

    def __call__(self, mode: str, system: System, data: ImageSet, settings: CertifySettings,
                 indices: list[int]) -> Iterator[dict]:
        if not indices:
            return
        ray, workers, threads = self._start()
        actor = ray.remote(num_cpus=threads, max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS)(_Worker)
        system_ref = ray.put(system)
        pool = [actor.remote(system_ref, settings.batch_size, threads) for _ in range(min(workers, len(indices)))]
        # Keep every worker busy with a few images in flight; yield strictly in idx order.
        pending, done, next_out, submitted = {}, {}, 0, 0
        depth = 2 * len(pool)
        while next_out < len(indices):
            while submitted < len(indices) and len(pending) < depth:
                idx = indices[submitted]
                pixels, label = data[idx]
                ref = pool[submitted % len(pool)].row.remote(mode, settings, idx, pixels, label)
                pending[ref] = submitted
                submitted += 1
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                done[pending.pop(ref)] = ray.get(ref)
            while next_out in done:
                yield done.pop(next_out)
                next_out += 1
        for worker in pool:
            ray.kill(worker)
