"""Where a system runs: ``--device cpu|cuda|cuda:N|auto`` as a torch device, refused clearly where absent.

What runs where (docs/gpu.md): FloatRS-fp's model, its Gaussian noise and the vote counts on the device;
the integer systems' engine (``intrs.torch_engine``) and table search there too, with the CPU's random
words, so their rows are the same integers on every device. On the CPU the compiled kernels stay the
integer systems' default.
"""

from __future__ import annotations

import torch

from .errors import ConfigError

DEVICE_CHOICES = "cpu, cuda, cuda:N or auto"


def resolve_device(spec: str | torch.device | None) -> torch.device:
    """The torch device for ``spec``: None or "cpu" the CPU, "auto" CUDA where present (else the CPU),
    "cuda" / "cuda:N" a CUDA device that must exist (``ConfigError`` otherwise)."""
    if spec is None:
        return torch.device("cpu")
    if isinstance(spec, torch.device):
        text = str(spec)
    else:
        text = str(spec).strip().lower()
    if text == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown device {spec!r}: choose {DEVICE_CHOICES}") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise ConfigError(f"unsupported device {spec!r}: choose {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        built = "built without CUDA" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise ConfigError(f"device {text!r}: no CUDA device is available here (torch {torch.__version__}, {built}); "
                          "use --device cpu or auto")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError(f"device {text!r} does not exist: this machine has {count} CUDA device(s), "
                          f"cuda:0..cuda:{count - 1}")
    return device


def is_cpu(device: torch.device | None) -> bool:
    return device is None or torch.device(device).type == "cpu"
