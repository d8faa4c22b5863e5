"""Inference: sliding window, the segmenter and its backends, batch segmentation of files and folders
(names imported on first use)."""

from satseg.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "sliding_window": ["sliding_window_inference"],
        "segmenter": ["Segmenter", "Segmentation", "load_segmenter"],
        "batch": ["segment_inputs", "SegmentReport"],
        "input_guard": ["check_fit"],
        "postprocess": ["keep_largest_components", "read_lcc"],
    },
)
