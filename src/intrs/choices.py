"""The names a user chooses among, and the training schedules: plain data, no torch.

The command line builds its flags and help from these, so ``intrs --help`` and a
bad flag answer at once instead of after importing torch and scipy (seconds). The
modules that implement each name (``data.DATASETS``, ``experiments.PRESETS``,
``deploy.FORMATS``) keep their tables; a test checks that their names are these.
"""

from __future__ import annotations

from dataclasses import dataclass

DATASET_NAMES = ("fashion-mnist", "cifar10", "caltech101", "digits")
SYSTEM_NAMES = ("floatrs-fp", "intrs-quant", "floatrs-quant")
INTRS_NOISES = ("discrete-gaussian", "rounded-gaussian")
EXPERIMENTS = ("table1", "certify-sigma", "sigma-mismatch", "pgd-linf", "pgd-l2", "alpha", "noisy-images")
PRESET_NAMES = ("ci", "fmnist", "paper-cifar10", "paper-caltech101")
EXPORT_FORMATS = ("tflite", "onnx", "c")  # c: a source tree (intrs.c_export), not a file


@dataclass(frozen=True)
class Schedule:
    """How long and how hard to train. ``batch_size`` None means the data set's paper batch size."""

    epochs: int
    lr: float
    lr_step: int  # divide the learning rate by 10 every lr_step epochs
    batch_size: int | None = None
    train_subset: int | None = None  # train on the first N images only
    momentum: float = 0.9
    weight_decay: float = 1e-4
    purpose: str = ""  # what it is for, in the help

    def describe(self) -> str:
        images = f" on the first {self.train_subset:,} images" if self.train_subset else ""
        batch = f"batch {self.batch_size}" if self.batch_size else "the data set's paper batch (256; 64 on Caltech-101)"
        return f"{self.epochs} epochs{images}, lr {self.lr:g} / 10 every {self.lr_step}, {batch}; {self.purpose}"


SCHEDULES: dict[str, Schedule] = {
    # The paper's appendix A.
    "paper": Schedule(epochs=90, lr=0.1, lr_step=30, purpose="the paper's (appendix A)"),
    "short": Schedule(epochs=3, lr=0.1, lr_step=2, batch_size=128, train_subset=30000,
                      purpose="the demo's: a usable Fashion-MNIST model in a few minutes on 2 CPU cores"),
    "ci": Schedule(epochs=2, lr=0.05, lr_step=1, batch_size=64, train_subset=1024,
                   purpose="the tests': seconds, a test of the pipeline, not a usable model"),
}


def schedule_help() -> str:
    """Every schedule in one line each, for ``--schedule``'s help."""
    return "; ".join(f"{name}: {schedule.describe()}" for name, schedule in SCHEDULES.items()) + "."
