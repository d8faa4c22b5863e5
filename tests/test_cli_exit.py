"""The console entry point ends the process without the interpreter's module teardown (issue 26: ~0.2 s of a
one-scan `segment`), yet owes everything a clean exit does: the exit status, flushed output, `atexit` handlers,
finished threads. Reference: the same command under Typer's own runner (in this process, normal Python)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

import satseg
from satseg.cli import app

REPO = Path(satseg.__file__).resolve().parents[1]


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, encoding="utf-8", timeout=300, cwd=REPO
    )


MAIN = "import sys; from satseg.cli import main; sys.argv = ['satseg', *sys.argv[1:]]; main()"


def test_output_and_exit_status_match_typers_runner():
    """A long `--json` output through a pipe arrives whole; a refused input keeps its exit status."""
    reference = CliRunner().invoke(app, ["models", "--json"])
    result = _python(MAIN, "models", "--json")
    assert result.returncode == reference.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == json.loads(reference.stdout) and len(result.stdout) > 1000

    missing = str(REPO / "no-such-scan.nii.gz")
    reference = CliRunner().invoke(app, ["segment", missing])
    result = _python(MAIN, "segment", missing)
    assert reference.exit_code not in (0, None) and result.returncode == reference.exit_code
    assert "no-such-scan.nii.gz" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_atexit_handlers_and_threads_finish_before_the_process_ends(tmp_path):
    marker, late = tmp_path / "atexit.txt", tmp_path / "thread.txt"
    code = (
        "import atexit, sys, threading, time\n"
        f"atexit.register(lambda: open({str(marker)!r}, 'w').write('ran'))\n"
        f"threading.Thread(target=lambda: (time.sleep(0.3), open({str(late)!r}, 'w').write('done'))).start()\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "pool = ThreadPoolExecutor(2); pool.submit(time.sleep, 0.1)\n"  # left open: its exit hook ends its workers
        "from satseg.cli import main\n"
        "sys.argv = ['satseg', '--version']\n"
        "main()\n"
    )
    result = _python(code)
    assert result.returncode == 0 and result.stdout.startswith(f"satseg {satseg.__version__}"), result.stderr
    assert marker.read_text() == "ran" and late.read_text() == "done"


def test_an_exit_message_goes_to_stderr_with_status_1():
    result = _python("from satseg.cli.app import _end_process; _end_process('stopped: no space left')")
    assert (result.returncode, result.stderr.strip(), result.stdout) == (1, "stopped: no space left", "")
    assert _python("from satseg.cli.app import _end_process; _end_process(None)").returncode == 0
    assert _python("from satseg.cli.app import _end_process; _end_process(3)").returncode == 3


def _openmp_spin_count(load: float, *env: str) -> str:
    """GNU OpenMP's spin count in a `satseg` process that loads torch, as the runtime itself reports it, with
    the machine's 1-minute load average made to read ``load``."""
    settings = dict(item.split("=", 1) for item in env) | {"OMP_DISPLAY_ENV": "VERBOSE"}
    code = f"import os; os.environ.update({settings!r}); os.getloadavg = lambda: ({load}, 0.0, 0.0); {MAIN}"
    result = _python(code, "params", "--net", "unet2d", "--compare", "org", "--patch", "32", "32", "--json")
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "GOMP_SPINCOUNT" in line]
    return line.split("=", 1)[1].strip(" '")


def test_the_entry_point_lets_waiting_openmp_threads_sleep_on_a_busy_machine_unless_the_user_chose():
    """Waiting threads that spin slow a training beside other busy processes (benchmarks/cpu_threads.py):
    `satseg` asks for the passive policy (no spinning) before torch loads OpenMP when the load average shows
    other work, keeps the runtime's default on an idle machine, and a user's own choice always stands."""
    clean = [name for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME") if name in os.environ]
    assert not clean, f"the test environment sets {clean}"
    assert _openmp_spin_count(2.5) == "0"
    assert int(_openmp_spin_count(0.2)) > 0  # idle: the runtime's default spinning
    assert int(_openmp_spin_count(2.5, "OMP_WAIT_POLICY=ACTIVE")) > 0
    assert _openmp_spin_count(2.5, "GOMP_SPINCOUNT=1234") == "1234"


def test_the_wait_policy_follows_the_load_and_is_set_only_where_the_user_set_none():
    from satseg.device import quiet_openmp_waits

    environ = {"PATH": "/bin"}
    assert not quiet_openmp_waits(environ, load=0.99) and environ == {"PATH": "/bin"}
    assert quiet_openmp_waits(environ, load=1.0) and environ["OMP_WAIT_POLICY"] == "PASSIVE"
    for chosen in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "10"}, {"KMP_BLOCKTIME": "0"}):
        environ = dict(chosen)
        assert not quiet_openmp_waits(environ, load=4.0) and environ == chosen
