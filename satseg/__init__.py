"""satseg: 2D and 3D medical image segmentation with light, learnable skip connections (SAT gates)."""

from typing import Any

from satseg.errors import CheckpointError, ConfigError, DataError, SatsegError

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The model API needs torch; importing it lazily keeps `satseg --help` and data-only use light.
    if name in ("build_model", "list_models", "list_gates"):
        import satseg.nn

        return getattr(satseg.nn, name)
    raise AttributeError(f"module `satseg` has no attribute `{name}`")


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
