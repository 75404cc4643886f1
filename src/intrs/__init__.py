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

# Each public name and the module that defines it, imported on first use (PEP 562): "import intrs" and the
# command line's help stay free of torch and scipy, which take seconds to import.
_HOMES = {
    **dict.fromkeys(('CertifySettings', 'run'), "certification"),
    **dict.fromkeys(('Checkpoint', 'load_checkpoint', 'save_checkpoint'), "checkpoint"),
    **dict.fromkeys(('DATASETS', 'ImageSet', 'load_dataset', 'to_pixels'), "data"),
    **dict.fromkeys(('CheckpointError', 'ConfigError', 'DataError', 'IntrsError', 'OutputError',
                     'OutputExistsError'), "errors"),
    **dict.fromkeys(('ModelConfig', 'build_model', 'load_torchvision_state_dict'), "models"),
    **dict.fromkeys(('certified_radius', 'radius_table'), "certificate"),
    **dict.fromkeys(('confidence_sequence', 'radius_tables'), "confidence"),
    **dict.fromkeys(('DiscreteGaussianNoise', 'GaussianNoise', 'RoundedGaussianNoise', 'noise_law'), "noise"),
    **dict.fromkeys(('analyze', 'certified_accuracy'), "report"),
    **dict.fromkeys(('ABSTAIN', 'Certificate', 'Prediction', 'SequentialCertificate', 'SequentialPrediction',
                     'SmoothedClassifier', 'TorchClassifier'), "smoothing"),
    **dict.fromkeys(('System', 'make_system'), "systems"),
    **dict.fromkeys(('SCHEDULES', 'TrainConfig', 'train'), "training"),
}


def __getattr__(name: str):
    import importlib

    if name in _HOMES:
        value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
        globals()[name] = value
        return value
    try:  # a submodule, as in intrs.quant.prepare after a bare "import intrs"
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_HOMES))


__all__ = [
    "ABSTAIN", "Certificate", "CertifySettings", "Checkpoint", "CheckpointError", "ConfigError", "DATASETS",
    "DataError", "GaussianNoise", "ImageSet", "IntrsError", "ModelConfig", "OutputError", "OutputExistsError",
    "Prediction",
    "SCHEDULES", "SmoothedClassifier", "System", "TorchClassifier", "TrainConfig", "analyze", "build_model",
    "certified_accuracy", "certified_radius", "radius_table", "DiscreteGaussianNoise",
    "RoundedGaussianNoise", "noise_law", "load_checkpoint", "load_dataset", "load_torchvision_state_dict",
    "make_system", "run", "save_checkpoint", "to_pixels", "train", "SequentialCertificate", "SequentialPrediction",
    "confidence_sequence", "radius_tables",
]
