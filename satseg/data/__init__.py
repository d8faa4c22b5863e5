"""Image I/O, dataset layouts and preprocessing (see :mod:`satseg.data.io` for the axis conventions).

Names are imported lazily, so that code reading preprocessed folders (:mod:`satseg.data.store`)
does not pull in SimpleITK and nibabel.
"""

from satseg.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "io": ["Image", "read_image", "write_image", "with_array", "is_supported_image", "image_stem"],
        "grid": ["Grid"],
        "datasets": ["Case", "Dataset", "discover_dataset", "mask_to_labels"],
        "validate": ["BadCase", "InvalidCasesError"],
        "preprocess": ["PreprocessReport", "preprocess_dataset", "preprocess_image",
                       "restore_labels", "restore_probabilities", "restore_argmax"],  # fmt: skip
        "store": ["load_plan", "load_case", "load_splits"],
    },
)
