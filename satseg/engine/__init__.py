"""Engine: inference, export and evaluation built on the networks in :mod:`satseg.nn`."""

from satseg.engine.inference import SlidingWindowResult, gaussian_importance, sliding_window_inference, window_starts
from satseg.engine.onnx_export import ExportReport, OnnxPredictor, export_onnx, read_onnx_metadata

__all__ = [
    "SlidingWindowResult",
    "sliding_window_inference",
    "window_starts",
    "gaussian_importance",
    "ExportReport",
    "OnnxPredictor",
    "export_onnx",
    "read_onnx_metadata",
]
