"""`satseg train`'s options are TrainConfig's fields: every field reachable, its default and help from one place."""

import dataclasses
import re

import pytest
import typer
from typer.testing import CliRunner

from satseg.cli import app
from satseg.training import crossval
from satseg.training.config import TrainConfig

runner = CliRunner()
SPELLED = {"iters_per_epoch": "--iters", "model_options": "--features"}  # fields whose option has another name


def _train_options() -> dict[str, object]:
    command = typer.main.get_command(app).commands["train"]
    return {name: param for param in command.params for name in (*param.opts, *param.secondary_opts)}


def test_every_setting_is_an_option_with_the_setting_s_default():
    options = _train_options()
    for item in dataclasses.fields(TrainConfig):
        name = SPELLED.get(item.name, "--" + item.name.replace("_", "-"))
        assert name in options, f"TrainConfig.{item.name} has no option"
        param = options[name]
        if item.name not in ("fold", "amp", "model_options"):  # read as text (`all`), on/off, three options
            assert param.default == item.default, item.name
        assert item.metadata.get("help") is None or item.metadata["help"].split("[")[0].strip() in param.help


@pytest.fixture
def captured(monkeypatch, tmp_path):
    """``satseg train`` up to the library call: the config and the resume arguments it would pass."""
    seen = {}

    def fake_train_runs(data, out, config, **kwargs):
        seen.update(config=config, **kwargs)
        raise typer.Exit(0)

    monkeypatch.setattr(crossval, "train_runs", fake_train_runs)
    return lambda *args: (runner.invoke(app, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), *args]),
                          seen)  # fmt: skip


def test_the_settings_typed_reach_the_config(captured):
    result, seen = captured("--weight-decay", "0.01", "--foreground-fraction", "0.5", "--no-channels-last",
                            "--iters", "7", "--patch", "16", "16", "--features", "4", "8",
                            "--gate", "attend_channels=2", "--fold", "all", "--amp", "--elastic")  # fmt: skip
    assert result.exit_code == 0, result.output
    config = seen["config"]
    assert (config.weight_decay, config.foreground_fraction, config.channels_last) == (0.01, 0.5, False)
    assert config.iters_per_epoch == 7 and config.patch == (16, 16) and config.amp == "on" and config.elastic
    assert config.model_options == {"features": [4, 8], "gate_options": {"attend_channels": 2}}
    assert seen["every_fold"] and config.fold == 0
    # on --resume, each typed setting is checked or changed: the new ones too, none silently dropped
    new = {"weight_decay", "foreground_fraction", "channels_last", "iters_per_epoch", "patch"}
    assert new <= set(seen["changeable"])
    assert {"model_options", "amp", "elastic", "fold"} <= seen["given"]


def test_settings_not_typed_keep_the_config_defaults_and_are_not_resume_overrides(captured):
    result, seen = captured()
    assert result.exit_code == 0, result.output
    assert seen["config"] == TrainConfig()
    assert seen["changeable"] == {}


def test_help_shows_the_config_s_defaults():
    text = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}, terminal_width=200).output
    assert re.search(r"--epochs INT\s+Epochs\. \[default: 50\]", text)
    assert re.search(r"--foreground-fraction NUMBER\s+Share of patches .*\[default: 0\.33\]", text)
    assert "[default: 1 adadelta, 0.001 adam, 0.01 sgd]" in text


def test_building_the_cli_imports_no_torch():
    """The options come from TrainConfig, yet `satseg --version` and `--help` stay light: no torch until a
    command runs (device.py imports torch where it is used)."""
    import subprocess
    import sys

    code = "import sys; import satseg.cli, typer; typer.main.get_command(satseg.cli.app); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
