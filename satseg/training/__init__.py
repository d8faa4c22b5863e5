"""Training: configuration, the loop, losses, augmentation, patch sampling, validation, DDP, EMA,
cross-validation (names imported on first use)."""

from satseg.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "config": ["TrainConfig"],
        "trainer": ["train"],
        "loop": ["TrainResult"],
        "resume": ["prepare_run"],
        "crossval": ["train_runs"],
    },
)
