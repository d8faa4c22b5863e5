"""Export: a trained model as one self-contained ONNX file: graph, parity check, metadata (names imported
on first use)."""

from satseg.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "run": ["export_run", "export_model"],
        "onnx": ["export_onnx", "ExportReport"],
        "metadata": ["read_onnx_metadata"],
    },
)
