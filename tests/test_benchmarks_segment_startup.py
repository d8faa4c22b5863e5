"""benchmarks/segment_startup.py: reading `-X importtime` output and summing up runs, on hand-written input."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from segment_startup import report, summary, top_imports  # noqa: E402

IMPORTTIME = """\
import time: self [us] | cumulative | imported package
import time:    100000 |     100000 |     torch._C
import time:   2000000 |    2100000 |   torch
import time:    500000 |    2600000 | satseg.inference.batch
import time:     50000 |      50000 | numpy
some other line on stderr
"""


def test_top_imports_reads_cumulative_seconds_of_the_first_two_levels():
    top = top_imports(IMPORTTIME, count=2)
    assert top == {"satseg.inference.batch": 2.6, "torch": 2.1, "torch_imported": 1.0, "onnx_imported": 0.0}
    assert top_imports(IMPORTTIME.replace("torch", "other"))["torch_imported"] == 0.0


def test_summary_takes_medians_and_minima_and_the_report_names_the_load():
    runs = [
        {"wall_s": w, "cpu_s": w - 0.1, "peak_rss_mib": 200.0, "backend": "onnx", "timings": {"total_s": w / 4}}
        for w in (1.5, 1.1, 1.3)
    ]
    s = summary(runs)
    assert (s["wall_s"], s["wall_min_s"], s["cpu_s"], s["phases_s"]) == (1.3, 1.1, 1.2, {"total_s": 0.325})
    results = {
        "scan": "/x/case.nii.gz", "date": "d", "rounds": 3, "cpus": 2, "target_s": 1.0,
        "loads": [{"before": [2.0, 2.1, 2.2], "after": [1.9, 2.0, 2.1]}], "commits": {"after": "abc1234"},
        "summary": {"after": s}, "imports": {"after": {"numpy": 0.1, "torch_imported": 0.0}},
    }  # fmt: skip
    text = report(results)
    assert "[2.0, 2.1, 2.2]" in text and "| after | onnx | 1.30 | 1.10 | 1.20 | 1.00 | 200 | 0.33 | no |" in text
