"""The CPU session's memory settings and `segment --low-memory` (issue 26); `--amp` with `--model`.

References: ONNX Runtime's own default session (whose memory pattern raises the peak from the second run on),
glibc's own count of mapped blocks (``mallinfo2``), the mask of a default run, and the backend ``--amp`` is
documented to choose on the CPU (PyTorch: the export is float32).

The glibc setting lasts for the rest of a process, so what sets it runs in fresh processes.
"""

import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hostile import scan, write_nifti
from tiny_models import mri_plan, save_model
from typer.testing import CliRunner

import satseg
from satseg.cli import app
from satseg.data.io import read_image
from satseg.export.onnx import export_onnx
from satseg.nn import build_model
from satseg.nn.lean import make_lean

REPO = Path(satseg.__file__).resolve().parents[1]
GLIBC = platform.libc_ver()[0] == "glibc"
runner = CliRunner()


def _python(args: list[str], **env: str) -> str:
    """``python ARGS`` in a fresh one-thread interpreter on this source tree (``env`` added); its stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    result = subprocess.run([sys.executable, *args], env=env, capture_output=True, encoding="utf-8",
                            errors="replace", timeout=600, cwd=REPO)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _run_code(code: str, *args: str) -> str:
    return _python(["-c", textwrap.dedent(code), *args])


PEAKS = """
    import sys
    import numpy as np
    import onnxruntime as ort
    from satseg.inference.backends import OnnxPredictor

    path, which = sys.argv[1], sys.argv[2]
    x = np.random.default_rng(0).standard_normal((1, 1, 512, 512), dtype=np.float32)
    if which == "satseg":
        run = OnnxPredictor(path, device="cpu", low_memory=False)
    else:  # ONNX Runtime's defaults
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        run = lambda x: session.run(None, {session.get_inputs()[0].name: x})
    peaks = []
    for _ in range(3):
        run(x)
        # VmHWM: this process's peak RSS since exec (ru_maxrss would keep pytest's from before the fork)
        status = open("/proc/self/status").read().split("VmHWM:")[1]
        peaks.append(int(status.split()[0]) / 1024)
    print(peaks)
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="reads the peak RSS from /proc")
def test_repeated_windows_do_not_raise_the_cpu_session_s_peak(tmp_path):
    """ONNX Runtime's memory pattern allocates, from the second run of a shape on, one block for all of the
    graph's activations beside the arena: the default session's peak rises after the first window. satseg's CPU
    session plans no pattern, so its peak stays where the first window put it."""
    torch.manual_seed(0)
    model = build_model("unet2d", "org", 1, 3, features=(8, 16, 32, 64)).eval()
    path = tmp_path / "unet.onnx"
    export_onnx(make_lean(model), path, example_shape=(1, 1, 64, 64), metadata={}, check=False)
    default = json.loads(_run_code(PEAKS, str(path), "ort"))
    ours = json.loads(_run_code(PEAKS, str(path), "satseg"))
    assert default[1] - default[0] > 10  # MiB: the reference shows the pattern's growth (29 MiB when written)
    assert ours[2] - ours[0] < 2


MAPPED = """
    import ctypes, sys
    import numpy as np
    from satseg.inference.backends import unmap_freed_blocks

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                    "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    if sys.argv[1] == "fixed":
        assert unmap_freed_blocks()
    block = np.ones(4 << 20, np.uint8)  # 4 MiB: mapped, over glibc's initial 128 KiB threshold
    del block  # freeing a mapped block raises glibc's threshold to its size, unless fixed
    mapped = libc.mallinfo2().hblks
    block = np.ones(1 << 20, np.uint8)  # 1 MiB: from the heap under the raised threshold, else mapped
    print(libc.mallinfo2().hblks - mapped)
"""


@pytest.mark.skipif(not GLIBC, reason="mallopt and mallinfo2 are glibc's")
def test_unmap_freed_blocks_keeps_glibc_s_mmap_threshold_fixed():
    assert _run_code(MAPPED, "dynamic").strip() == "0"  # glibc's own behaviour: the reference
    assert _run_code(MAPPED, "fixed").strip() == "1"


@pytest.fixture(scope="module")
def run_and_scan(tmp_path_factory):
    folder = tmp_path_factory.mktemp("low-memory")
    run = save_model(folder / "run", mri_plan(), seed=0, gain=1.5)
    image = write_nifti(folder / "scan.nii.gz", scan((20, 26, 22), seed=2), (2.5, 1.5, 1.5))
    return run, image


def _segment_json(args: list[str], cache: Path) -> dict:
    return json.loads(_python(["-m", "satseg", "segment", *args, "--json"], SATSEG_CACHE=str(cache)))["results"][0]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_low_memory_segment_writes_the_default_mask(run_and_scan, tmp_path, backend):
    """`--low-memory` changes where memory goes, not what is computed: the same mask as a default run, on either
    backend (ONNX Runtime: the CPU default, through the cached export), each in its own process (the glibc
    setting is process-wide)."""
    run, image = run_and_scan
    chosen = ["--backend", backend] if backend == "torch" else []
    common = [str(image), "--model", str(run), "--device", "cpu", *chosen]
    result = runner.invoke(app, ["segment", *common, "-o", str(tmp_path / "default.nii.gz")])
    assert result.exit_code == 0, result.output
    low = _segment_json([*common, "--low-memory", "-o", str(tmp_path / "low.nii.gz")], tmp_path / "cache")
    assert low["backend"] == backend
    expected = read_image(tmp_path / "default.nii.gz").array
    assert len(np.unique(expected)) > 1  # the untrained net at gain 1.5 labels more than one class
    np.testing.assert_array_equal(read_image(tmp_path / "low.nii.gz").array, expected)


def test_amp_reaches_a_model_given_with_model(run_and_scan, tmp_path):
    """`--model RUN --amp` autocasts PyTorch on the CPU (the ONNX export is float32), `--no-amp` and the default
    take the float32 export: the model named by --model used to be loaded once, before --amp was passed on."""
    run, image = run_and_scan
    backends = {}
    for flag in ("--amp", "--no-amp", None):
        args = ["segment", str(image), "--model", str(run), "--device", "cpu", "--json", "--overwrite",
                "-o", str(tmp_path / "mask.nii.gz"), *([flag] if flag else [])]  # fmt: skip
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        backends[flag] = json.loads(result.stdout)["results"][0]["backend"]
    assert backends == {"--amp": "torch", "--no-amp": "onnx", None: "onnx"}
