"""`satseg preprocess` through Typer's CliRunner: summary, JSON, one-line errors, the bad-case table."""

import json

from typer.testing import CliRunner

from satseg.cli import app

runner = CliRunner()


def test_preprocess_json_summary(msd_dataset, tmp_path):
    result = runner.invoke(app, ["preprocess", str(msd_dataset), "-o", str(tmp_path / "pp"), "--folds", "2", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["written"] == 5 and summary["spatial_dims"] == 3 and summary["spacing"] == [2.0, 1.0, 1.0]
    assert (tmp_path / "pp" / "plan.json").is_file() and (tmp_path / "pp" / "splits.json").is_file()


def test_missing_dataset_is_one_line(tmp_path):
    result = runner.invoke(app, ["preprocess", str(tmp_path / "nope"), "-o", str(tmp_path / "pp")])
    assert result.exit_code == 1
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert lines[0].startswith("error:") and "nope" in lines[0] and "does not exist" in lines[0]
    assert "Traceback" not in result.output and not (tmp_path / "pp").exists()


def test_bad_spacing_is_one_line(msd_dataset, tmp_path):
    result = runner.invoke(app, ["preprocess", str(msd_dataset), "-o", str(tmp_path / "pp"), "--spacing", "fast"])
    assert result.exit_code == 1 and "error: --spacing `fast`" in result.output and "Traceback" not in result.output


def test_bad_cases_table_and_exit_code(msd_dataset, tmp_path):
    raw = (msd_dataset / "imagesTr" / "case_1.nii.gz").read_bytes()
    (msd_dataset / "imagesTr" / "case_1.nii.gz").write_bytes(raw[:100])
    result = runner.invoke(app, ["preprocess", str(msd_dataset), "-o", str(tmp_path / "pp"), "--folds", "2"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "cases that failed validation" in result.output and "case_1" in result.output
    assert "error:" in result.output and not (tmp_path / "pp").exists()
    skipped = ["preprocess", str(msd_dataset), "-o", str(tmp_path / "pp"), "--folds", "2", "--skip-bad", "--json"]
    result = runner.invoke(app, skipped)
    assert result.exit_code == 0 and "case_1" in result.output
