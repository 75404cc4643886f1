import pytest
import torch

from intrs.checkpoint import load_checkpoint
from intrs.errors import CheckpointError, ConfigError, OutputExistsError
from intrs.training import TrainConfig, train

TINY = dict(arch="resnet8", width=4, schedule="ci", eval_images=100, train_subset=256)


def test_checkpoint_carries_its_metadata(digits_checkpoint):
    ckpt = load_checkpoint(digits_checkpoint)
    assert (ckpt.dataset, ckpt.sigma, ckpt.epoch, ckpt.seed) == ("digits", 0.25, 2, 0)
    assert ckpt.config.arch == "resnet8" and ckpt.config.in_channels == 1 and ckpt.config.num_classes == 10
    assert 0 <= ckpt.metrics["test_accuracy_noisy"] <= 1 and ckpt.metrics["eval_images"] == 200
    assert (digits_checkpoint.parent / "train_log.tsv").read_text().count("\n") == 3  # header + 2 epochs


def test_noise_augmented_training_learns_digits(digits_checkpoint):
    # 2 short epochs on 1,024 images: far above the 10% of chance.
    assert load_checkpoint(digits_checkpoint).metrics["test_accuracy_clean"] > 0.3


def test_resume_with_other_settings_is_refused(tmp_path):
    train(TrainConfig("digits", 0.25, **TINY, epochs=1), tmp_path / "split")
    with pytest.raises(CheckpointError, match="resume with the same settings"):
        train(TrainConfig("digits", 0.25, **TINY), tmp_path / "split", resume=True)


def test_resumed_run_matches_uninterrupted_run_bit_for_bit(tmp_path, monkeypatch):
    import intrs.training as training

    config = TrainConfig("digits", 0.5, **TINY)
    full = train(config, tmp_path / "full")
    calls = {"n": 0}
    real = training._train_epoch

    def crash_in_epoch_2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "_train_epoch", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "split")
    monkeypatch.setattr(training, "_train_epoch", real)
    assert load_checkpoint(tmp_path / "split" / "checkpoint.pt").epoch == 1
    resumed = train(config, tmp_path / "split", resume=True)
    assert resumed.epoch == 2
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_existing_run_is_not_overwritten_without_force(tmp_path, digits_checkpoint):
    before = digits_checkpoint.read_bytes()
    with pytest.raises(OutputExistsError, match="--resume.*--force"):
        train(TrainConfig("digits", 0.25, **TINY), digits_checkpoint.parent)
    assert digits_checkpoint.read_bytes() == before


def test_bad_training_settings_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match="sigma"):
        train(TrainConfig("digits", 0.0, **TINY), tmp_path)
    with pytest.raises(ConfigError, match="unknown schedule"):
        train(TrainConfig("digits", 0.25, arch="resnet8", schedule="forever"), tmp_path)


def test_corrupt_and_foreign_checkpoints_are_rejected(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an intrs checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
