"""Image I/O, dataset layouts and preprocessing (see :mod:`satseg.data.io` for the axis conventions)."""

from satseg.data.datasets import Case, Dataset, discover_dataset, mask_to_labels
from satseg.data.grid import Grid
from satseg.data.io import Image, image_stem, is_supported_image, read_image, with_array, write_image
from satseg.data.preprocess import (
    PreprocessReport,
    load_case,
    load_plan,
    preprocess_dataset,
    preprocess_image,
    restore_labels,
    restore_probabilities,
)
from satseg.data.validate import BadCase, InvalidCasesError

__all__ = [
    "Image",
    "read_image",
    "write_image",
    "with_array",
    "is_supported_image",
    "image_stem",
    "Grid",
    "Case",
    "Dataset",
    "discover_dataset",
    "mask_to_labels",
    "BadCase",
    "InvalidCasesError",
    "PreprocessReport",
    "preprocess_dataset",
    "preprocess_image",
    "restore_labels",
    "restore_probabilities",
    "load_plan",
    "load_case",
]
