"""satseg: 2D and 3D medical image segmentation with light, learnable skip connections (SAT gates)."""

from satseg.errors import CheckpointError, ConfigError, DataError, SatsegError
from satseg.nn import build_model, list_gates, list_models

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "build_model",
    "list_models",
    "list_gates",
    "SatsegError",
    "ConfigError",
    "DataError",
    "CheckpointError",
]
