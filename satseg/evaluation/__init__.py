"""Evaluation: metrics, scoring folders of masks or a trained model, and the reports they write (names
imported on first use)."""

from satseg.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "metrics": ["METRICS", "case_metrics", "dice"],
        "folders": ["evaluate_folders"],
        "model": ["evaluate_model"],
        "postprocess": ["decide_lcc"],
        "report": ["EvaluationReport", "summarise", "gate_report"],
    },
)
