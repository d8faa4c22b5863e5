"""What a new user meets first: list options in every form, tables that fit 80 columns, a readable train --help."""

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from satseg.cli import app
from satseg.cli.options import parse_sizes, split_items
from satseg.nn import list_gates, list_models
from satseg.nn.params import compare_models
from satseg.tables import demo_table, fit_table, gate_table, params_table, summary_table

runner = CliRunner()
FAST = ["--no-flops", "--no-memory"]


def _parsed(name: str, args: list[str]) -> dict:
    """What the command's parser makes of ``args`` (required options may be missing)."""
    command = typer.main.get_command(app).commands[name]
    with command.make_context(name, list(args), resilient_parsing=True) as ctx:
        return ctx.params


@pytest.mark.parametrize(
    "form",
    [["--compare", "org", "sat"], ["--compare", "org,sat"], ["--compare", "org", "--compare", "sat"],
     ["--compare=org", "sat"], ["--compare", "org, sat"]],
)  # fmt: skip
def test_params_compare_forms_give_the_same_output(form):
    reference = runner.invoke(app, ["params", "--net", "unet2d", "--compare", "org,sat", *FAST, "--json"])
    result = runner.invoke(app, ["params", "--net", "unet2d", *form, *FAST, "--json"])
    assert reference.exit_code == 0 and result.exit_code == 0, result.output
    assert result.stdout == reference.stdout
    expected = compare_models(["unet2d"], ["org", "sat"], flops=False, memory=False)
    assert [r["skip"] for r in expected] == ["org", "sat"]
    assert f'"params": {expected[1]["params"]}' in result.stdout


def test_params_net_and_patch_take_lists_too():
    result = runner.invoke(app, ["params", "--net", "unet2d", "vnet2d", "--compare", "org", "--patch", "32", "32",
                                 *FAST, "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "unet2d" in result.stdout and "vnet2d" in result.stdout
    assert result.stdout.count('"skip": "org"') == 2


def test_list_options_keep_positional_arguments_and_other_options():
    parsed = _parsed("preprocess", ["--spacing", "1", "2.5", "1", "Task04", "-o", "out", "--size", "64,64"])
    assert parsed["spacing"] == ["1", "2.5", "1"] and parsed["size"] == ["64,64"]
    assert parsed["dataset"] == Path("Task04") and parsed["output"] == Path("out")
    # a dataset named after the option's value is not swallowed when it is not a number
    parsed = _parsed("preprocess", ["--spacing", "auto", "data"])
    assert parsed["spacing"] == ["auto"] and parsed["dataset"] == Path("data")
    # `--` ends the list: what follows is an argument, a number too
    parsed = _parsed("preprocess", ["--spacing", "1", "--", "2"])
    assert parsed["spacing"] == ["1"] and parsed["dataset"] == Path("2")


def test_train_and_evaluate_list_options_take_all_values():
    parsed = _parsed("train", ["--features", "4", "8", "--patch", "16x16", "--net", "unet2d", "--gate=a=1", "b=2"])
    assert parsed["features"] == ["4", "8"] and parsed["patch"] == ["16x16"] and parsed["net"] == "unet2d"
    assert parsed["gate"] == ["a=1", "b=2"]
    assert parse_sizes(["4", "8"]) == (4, 8) == parse_sizes("4,8") == parse_sizes("4x8")
    assert _parsed("evaluate", ["--labels", "liver=1", "tumour=2"])["labels"] == ["liver=1", "tumour=2"]
    assert split_items(["liver=1", "tumour=2"]) == split_items("liver=1,tumour=2") == ["liver=1", "tumour=2"]
    assert split_items([]) is None


def test_preprocess_spacing_forms_reach_the_plan(tmp_path):
    import json

    from satseg.data.synthetic import write_synthetic_msd

    raw = write_synthetic_msd(tmp_path / "raw", 3, (12, 14, 12), seed=1)
    plans = {}
    for name, spacing in (("spaced", ["--spacing", "2", "2", "2"]), ("commas", ["--spacing", "2,2,2"])):
        result = runner.invoke(app, ["preprocess", *spacing, str(raw), "-o", str(tmp_path / name), "--folds", "2",
                                     "--json"])  # fmt: skip
        assert result.exit_code == 0, result.output
        plans[name] = json.loads((tmp_path / name / "plan.json").read_text())
    assert plans["spaced"]["spacing"] == [2.0, 2.0, 2.0]
    assert plans["spaced"] == plans["commas"]


def test_train_help_is_grouped_and_lists_the_registry():
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}, terminal_width=200)
    assert result.exit_code == 0
    text = result.output
    panels = re.findall(r"^([A-Z][A-Za-z ]+):$", text, re.M)
    assert [p for p in panels if p != "Options"] == ["Data", "Model", "Optimisation", "Hardware", "Run control"]
    blocks = dict(re.findall(r"^([A-Z][A-Za-z ]+):\n(.*?)(?=^\S|\Z)", text, re.M | re.S))
    options = {panel: set(re.findall(r"(--[a-z][a-z-]*)", body)) for panel, body in blocks.items()}
    assert {"--data", "--fold", "--patch", "--augment", "--rotation-deg", "--elastic"} <= options["Data"]
    assert {"--net", "--skip", "--features"} <= options["Model"]
    assert {"--epochs", "--optimizer", "--deep-supervision", "--ema", "--seed"} <= options["Optimisation"]
    assert {"--device", "--resident", "--amp-dtype", "--compile"} <= options["Hardware"]
    assert {"--out", "--resume", "--max-minutes", "--json"} <= options["Run control"]
    assert "`all`: each fold" in blocks["Data"]
    for name in list_models() + list_gates():
        assert re.search(rf"\b{re.escape(name)}\b", text), name
    assert "{models}" not in text and "{gates}" not in text


def test_every_help_is_whole_at_80_columns():
    commands = ["train", "evaluate", "params", "preprocess", "segment", "export-onnx", "postprocess", "models", "demo"]
    for command in [[], *([c] for c in commands)]:
        result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert max(len(line) for line in lines) <= 80, command
        for junk in ("<bool>", "<list", "<str>", "<int>", "{", "╭"):
            assert junk not in result.output, (command, junk)
        if command:  # every option name whole, on its own or with its metavar
            names = re.findall(r"^\s+(--[a-z][a-z-]*)", result.output, re.M)
            assert len(names) >= 2 and not any(n.endswith("-") for n in names), names
    train = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "80"}, terminal_width=80).output
    for name in ("--no-deep-supervision", "--save-probabilities", "--max-minutes", "--select-lr-scale"):
        if name == "--save-probabilities":
            segment = runner.invoke(app, ["segment", "--help"], env={"COLUMNS": "80"}, terminal_width=80).output
            assert name in segment
        else:
            assert name in train, name


def test_a_usage_error_is_one_error_line_and_a_hint(tmp_path):
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run")], prog_name="satseg")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == ["error: Missing option '--data'.", "hint: see `satseg train --help`"]
    unknown = runner.invoke(app, ["segment", "--bogus", "x"])
    assert unknown.exit_code == 2 and unknown.stderr.startswith("error: No such option: --bogus")


# --- tables at 80 columns ----------------------------------------------------------------------------------------


def _render(renderable, width: int = 80) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None, legacy_windows=False).print(renderable)
    return buffer.getvalue()


def _assert_whole(text: str, figures: list[str], width: int = 80) -> None:
    assert max(len(line) for line in text.splitlines()) <= width
    assert "…" not in text
    for figure in figures:
        assert figure in text, f"`{figure}` is not shown whole:\n{text}"


def _params_rows() -> list[dict]:
    rows = compare_models(["vnet2d", "tiramisu2d"], ["org", "sat"], flops=False, memory=False)
    # the widest figures satseg prints: a 3D V-Net's parameters, big FLOP and memory figures
    return [r | {"params": 65_183_202, "flops": 1234.56e9, "peak_memory_bytes": 98765 * 2**20} for r in rows]


def test_train_net_and_skip_choices_are_the_registry_s(tmp_path):
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}, terminal_width=200)
    assert "Backbone: " + ", ".join(list_models()) + "." in result.output
    assert "Skip gate: " + ", ".join(list_gates()) + "." in result.output
    for option, wrong, near in (("--net", "unet9d", "unet3d"), ("--skip", "sta", "st")):
        result = runner.invoke(app, ["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "run"),
                                     option, wrong])  # fmt: skip
        assert result.exit_code == 1
        # the library's own one-line error, before any data is read (the data folder does not exist)
        assert f"error: unknown {option[2:]} `{wrong}`; did you mean `{near}`?" in result.output
        assert "plan.json" not in result.output and "Usage" not in result.output


def test_params_table_keeps_every_number_whole_at_80_columns():
    rows = _params_rows()
    text = _render(fit_table(params_table(rows), 80))
    figures = ["65,183,202", "1234.56", "98765.00"] + [f"{r['params_change_pct']:+.1f} %" for r in rows]
    _assert_whole(text, figures + [f"{r['skip_bytes'] / 2**20:.2f}" for r in rows])


def test_params_cli_at_80_columns_shows_whole_parameter_counts():
    env = {**os.environ, "COLUMNS": "80", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "satseg", "params", "--net", "vnet2d", "tiramisu2d", "--compare", "org", "sat"]
    proc = subprocess.run(command + ["--no-memory"], capture_output=True, encoding="utf-8", env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    expected = compare_models(["vnet2d", "tiramisu2d"], ["org", "sat"], flops=False, memory=False)
    _assert_whole(proc.stdout, [f"{r['params']:,}" for r in expected])


def _summary(classes: int) -> dict:
    entry = {"mean": 0.912345, "std": 0.0345, "n": 3, "n_undefined": 0}
    hd = {"mean": 123.456, "std": 45.6789, "n": 2, "n_undefined": 1}
    metrics = {m: entry for m in ("dice", "iou", "fpr", "fnr", "nsd")} | {"hd95": hd, "assd": hd}
    return {"num_cases": 3, "tolerance_mm": 1.0,
            "classes": {f"structure{i}": {"label": i, **metrics} for i in range(1, classes + 1)}}  # fmt: skip


@pytest.mark.parametrize("classes", [1, 3, 9])
def test_evaluation_table_is_whole_at_80_columns(classes):
    text = _render(fit_table(summary_table(_summary(classes)), 80))
    _assert_whole(text, ["0.912 ± 0.035", "123 ± 46 (n=2)"] + [f"structure{i}" for i in range(1, classes + 1)])
    assert text.count("0.912 ± 0.035") == 5 * classes


def test_a_table_that_fits_is_left_as_it_is():
    table = summary_table(_summary(1))
    assert fit_table(table, 400) is table


def test_gate_and_demo_tables_are_whole_at_80_columns():
    gates = [{"skip": f"decoder.levels.{i}.skip_gate", "gate": "sat", "channels": 128, "channels_off": 70,
              "fraction_off": 70 / 128, "selection": [0.0, 0.123456, 0.98765]} for i in range(4)]  # fmt: skip
    _assert_whole(_render(fit_table(gate_table(gates), 80)), ["70 (55 %)", "0 / 0.123 / 0.988"])
    row = {"skip": "org", "dice": {"hippocampus_anterior": 0.8123, "hippocampus_posterior": 0.79},
           "dice_std": {"hippocampus_anterior": 0.0312, "hippocampus_posterior": 0.04}, "params": 1_234_567,
           "skip_channels": [8, 16, 32, 64], "skip_bytes": 123 * 2**10, "channels_off": None, "train_seconds": 91.2,
           "steps_done": 400, "steps_planned": 400, "cpu_seconds_per_step": 0.4321}  # fmt: skip
    short = row | {"skip": "sat", "params": 1_100_042, "channels_off": 0.25, "steps_done": 160}
    text = _render(fit_table(demo_table({"rows": [row, short], "seconds": 183.4}), 80))
    _assert_whole(text, ["0.812 ± 0.031", "1,234,567", "1,100,042", "400/400", "160/400", "25 %", "0.43"])
    assert "cut short" in text.lower()
    assert "91" not in text and "183" not in text  # wall seconds swing with the machine's load: never shown
    assert "CUT SHORT" not in _render(fit_table(demo_table({"rows": [row], "seconds": 1.0}), 80))


# --- the demo ----------------------------------------------------------------------------------------------------


def test_demo_budgets_training_in_steps_not_minutes(tmp_path, monkeypatch):
    import satseg.demo as demo

    configs = []
    real_train = demo.train

    def recording_train(data, out, config):
        configs.append(config)
        return real_train(data, out, config)

    monkeypatch.setattr(demo, "train", recording_train)
    settings = demo.DemoSettings(cases=4, shape=(16, 20, 16), features=(4, 8), patch=(16, 16, 16), epochs=2,
                                 iters_per_epoch=2, device="cpu")  # fmt: skip
    result = demo.run_demo(settings, tmp_path / "demo")
    assert [c.max_minutes for c in configs] == [None, None]
    assert [(c.epochs, c.iters_per_epoch) for c in configs] == [(2, 2), (2, 2)]
    assert [(r["steps_done"], r["steps_planned"]) for r in result["rows"]] == [(4, 4), (4, 4)]
    text = _render(fit_table(demo_table(result), 80))
    assert "cut short" not in text.lower() and "CPU s" in text
    # CPU seconds per step: positive, and about what a step costs (not a share of the wall time)
    assert all(0 < r["cpu_seconds_per_step"] < 60 for r in result["rows"])
    assert "max_minutes" not in demo.DemoSettings.__dataclass_fields__
