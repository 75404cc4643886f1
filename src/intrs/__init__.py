"""intrs: integer-arithmetic-only certified L2 robustness for quantized neural networks.

The public API, in the order an image flows through it::

    data (uint8 pixels) -> noise law -> base classifier -> vote counts -> radius -> TSV row -> analyze

Certify your own PyTorch classifier::

    from intrs import GaussianNoise, SmoothedClassifier, TorchClassifier, to_pixels
    smoothed = SmoothedClassifier(TorchClassifier(model), GaussianNoise(sigma=0.25), num_classes=10)
    cert = smoothed.certify(to_pixels(image), n0=100, n=10_000, alpha=0.001, seed=0, idx=i)
    cert.prediction, cert.radius
"""

__version__ = "0.1.0"

from .certification import CertifySettings, run
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .data import DATASETS, ImageSet, load_dataset, to_pixels
from .errors import CheckpointError, ConfigError, DataError, IntrsError, OutputExistsError
from .models import ModelConfig, build_model, load_torchvision_state_dict
from .certificate import certified_radius, radius_table
from .confidence import confidence_sequence, radius_tables
from .noise import DiscreteGaussianNoise, GaussianNoise, RoundedGaussianNoise, noise_law
from .report import analyze, certified_accuracy
from .smoothing import (ABSTAIN, Certificate, Prediction, SequentialCertificate, SequentialPrediction,
                        SmoothedClassifier, TorchClassifier)
from .systems import System, make_system
from .training import SCHEDULES, TrainConfig, train

__all__ = [
    "ABSTAIN", "Certificate", "CertifySettings", "Checkpoint", "CheckpointError", "ConfigError", "DATASETS",
    "DataError", "GaussianNoise", "ImageSet", "IntrsError", "ModelConfig", "OutputExistsError", "Prediction",
    "SCHEDULES", "SmoothedClassifier", "System", "TorchClassifier", "TrainConfig", "analyze", "build_model",
    "certified_accuracy", "certified_radius", "radius_table", "DiscreteGaussianNoise",
    "RoundedGaussianNoise", "noise_law", "load_checkpoint", "load_dataset", "load_torchvision_state_dict",
    "make_system", "run", "save_checkpoint", "to_pixels", "train", "SequentialCertificate", "SequentialPrediction",
    "confidence_sequence", "radius_tables",
]
