"""Folder evaluation, summaries, gate reports and `satseg evaluate`, on synthetic files in tmp_path."""

import csv
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image as PILImage
from typer.testing import CliRunner

from satseg.cli import app
from satseg.errors import ConfigError, DataError
from satseg.evaluation.folders import case_name, evaluate_folders, match_cases, parse_labels
from satseg.evaluation.metrics import METRICS, case_metrics
from satseg.evaluation.report import ROW_FIELDS, gate_report, summarise
from satseg.nn import build_model
from satseg.tables import gate_table, summary_table

SPACING = (2.0, 0.8, 0.6)  # per array axis (z, y, x)
LABELS = {"background": 0, "liver": 1, "tumour": 2}


def _write(path, array, spacing=SPACING, origin=(10.0, -5.0, 3.0)):
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(tuple(reversed(spacing)))
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))
    return path


def _cases():
    """Two small 3D cases: reference and prediction label arrays."""
    ref_a = np.zeros((6, 10, 12), np.uint8)
    ref_a[1:5, 2:8, 2:9], ref_a[2:4, 3:6, 3:6] = 1, 2
    pred_a = ref_a.copy()
    pred_a[1, 2:8, 2:9] = 0
    pred_a[2:4, 6:8, 3:6] = 2
    ref_b = np.zeros((6, 10, 12), np.uint8)
    ref_b[2:5, 1:6, 4:10] = 1  # no tumour in the reference...
    pred_b = np.roll(ref_b, 1, axis=2)
    pred_b[0, 0, 0] = 2  # ...but one false tumour voxel in the prediction
    return {"case_a": (pred_a, ref_a), "case_b": (pred_b, ref_b)}


@pytest.fixture
def folders(tmp_path):
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir(), gt_dir.mkdir()
    for case, (pred, ref) in _cases().items():
        _write(pred_dir / f"{case}.nii.gz", pred)
        _write(gt_dir / f"{case}_seg.nrrd", ref)  # NRRD keeps the spacing exact; NIfTI rounds it to float32
    (gt_dir / "notes.txt").write_text("not an image")
    return pred_dir, gt_dir


@pytest.mark.parametrize(
    ("name", "case"),
    [
        ("case_001.nii.gz", "case_001"),
        ("case_001_seg.nii.gz", "case_001"),
        ("Case_7_GT.nrrd", "Case_7"),
        ("img.mha", "img"),
        ("slice_3_mask.png", "slice_3"),
        ("_seg.nii", "_seg"),
        ("notes.txt", None),
        (".hidden.nii.gz", None),
    ],
)
def test_case_name_strips_extension_and_one_label_suffix(name, case):
    assert case_name(name) == case


def test_evaluate_folders_writes_rows_equal_to_case_metrics(folders, tmp_path):
    pred_dir, gt_dir = folders
    report = evaluate_folders(pred_dir, gt_dir, tmp_path / "out", labels=LABELS, tolerance_mm=1.5)
    assert report.labels == {"liver": 1, "tumour": 2}
    expected = []
    for case, (pred, ref) in _cases().items():
        for name, values in case_metrics(pred, ref, LABELS, SPACING, 1.5).items():
            expected.append({"case": case, "class": name, "label": LABELS[name], **values})
    np.testing.assert_equal(report.rows, expected)  # (NaN equals NaN here)
    with open(report.per_case_csv, newline="") as stream:
        written = list(csv.DictReader(stream))
    assert tuple(written[0]) == ROW_FIELDS and len(written) == 4
    for row, want in zip(written, expected, strict=True):
        for key in ROW_FIELDS[3:]:
            value = float(row[key])
            assert (math.isnan(value) and math.isnan(want[key])) or value == want[key], key
    on_disk = json.loads(report.summary_json.read_text())
    assert on_disk["classes"]["liver"]["dice"]["mean"] == pytest.approx(
        report.summary["classes"]["liver"]["dice"]["mean"]
    )
    assert on_disk["tolerance_mm"] == 1.5 and on_disk["num_cases"] == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["per_case.csv", "report", "summary.json"]
    assert not list((tmp_path / "out" / "report").glob(".*"))  # no temp files


def test_summary_is_mean_and_population_std_over_cases_without_nan(folders):
    report = evaluate_folders(*folders, labels={"liver": 1, "tumour": 2})
    assert report.per_case_csv is None and report.summary_json is None
    liver = [row for row in report.rows if row["class"] == "liver"]
    summary = report.summary["classes"]["liver"]["dice"]
    dice = [row["dice"] for row in liver]
    assert summary["mean"] == pytest.approx((dice[0] + dice[1]) / 2)
    assert summary["std"] == pytest.approx(abs(dice[0] - dice[1]) / 2)
    assert (summary["n"], summary["n_undefined"]) == (2, 0)
    # case_b has a false tumour voxel and no tumour: Dice 0 counted, HD95 undefined and left out
    tumour = report.summary["classes"]["tumour"]
    assert tumour["dice"]["n"] == 2 and tumour["dice"]["mean"] == pytest.approx(report.rows[1]["dice"] / 2)
    assert (tumour["hd95"]["n"], tumour["hd95"]["n_undefined"]) == (1, 1)
    assert tumour["hd95"]["mean"] == pytest.approx(report.rows[1]["hd95"]) and tumour["hd95"]["std"] == 0
    fg = report.summary["foreground_mean"]["dice"]
    assert fg == pytest.approx((summary["mean"] + tumour["dice"]["mean"]) / 2)


def test_summarise_reports_none_when_no_value_is_defined():
    rows = [{"case": "a", "class": "x", "label": 1, **dict.fromkeys(METRICS, math.nan)}]
    summary = summarise(rows)
    assert summary["classes"]["x"]["hd95"] == {"mean": None, "std": None, "n": 0, "n_undefined": 1}
    assert summary["foreground_mean"]["dice"] is None


def test_labels_found_in_any_case_are_scored_in_every_case(folders):
    pred_dir, gt_dir = folders
    # case_b's reference lacks label 2; give case_b's prediction no label 2 either: correctly absent there
    pred, ref = _cases()["case_b"]
    pred[pred == 2] = 0
    _write(pred_dir / "case_b.nii.gz", pred)
    report = evaluate_folders(pred_dir, gt_dir)
    assert report.labels == {"label_1": 1, "label_2": 2}
    absent = [row for row in report.rows if row["case"] == "case_b" and row["label"] == 2]
    assert len(absent) == 1 and absent[0]["dice"] == 1 and absent[0]["hd95"] == 0
    assert absent[0]["tn"] == ref.size


def test_predictions_need_a_reference_but_references_may_lack_predictions(folders):
    pred_dir, gt_dir = folders
    (pred_dir / "case_b.nii.gz").unlink()
    matched, missing = match_cases(pred_dir, gt_dir)
    assert [case for case, _, _ in matched] == ["case_a"] and missing == ["case_b"]
    assert evaluate_folders(pred_dir, gt_dir).summary["missing_predictions"] == ["case_b"]
    _write(pred_dir / "case_z.nii.gz", np.zeros((6, 10, 12)))
    with pytest.raises(DataError, match="case_z.nii.gz"):
        match_cases(pred_dir, gt_dir)


def test_two_files_of_one_case_are_refused(folders):
    pred_dir, gt_dir = folders
    _write(pred_dir / "case_a_pred.nrrd", np.zeros((6, 10, 12)))
    with pytest.raises(DataError, match="both case `case_a`"):
        match_cases(pred_dir, gt_dir)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"array": np.zeros((6, 10, 11))}, "shape"),
        ({"spacing": (2.0, 0.8, 0.7)}, "spacing"),
        ({"origin": (10.0, -5.0, 4.0)}, "origin"),
    ],
)
def test_geometry_mismatch_names_both_files(folders, change, reason):
    pred_dir, gt_dir = folders
    pred = change.pop("array", _cases()["case_a"][0])
    _write(pred_dir / "case_a.nii.gz", pred, **change)
    with pytest.raises(DataError, match=reason) as caught:
        evaluate_folders(pred_dir, gt_dir)
    assert "case_a.nii.gz" in caught.value.message and "case_a_seg.nrrd" in caught.value.message


def test_probability_maps_are_refused(folders):
    pred_dir, gt_dir = folders
    image = sitk.GetImageFromArray(np.full((6, 10, 12), 0.3, np.float32))
    image.SetSpacing(tuple(reversed(SPACING)))
    image.SetOrigin((10.0, -5.0, 3.0))
    sitk.WriteImage(image, str(pred_dir / "case_a.nii.gz"))
    with pytest.raises(DataError, match="non-integer"):
        evaluate_folders(pred_dir, gt_dir)


def test_png_masks_with_0_255_are_read_as_0_1(tmp_path):
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir(), gt_dir.mkdir()
    ref = np.zeros((8, 9), np.uint8)
    ref[2:6, 2:7] = 255
    pred = np.zeros_like(ref)
    pred[2:6, 3:7] = 255
    PILImage.fromarray(ref).save(gt_dir / "img_mask.png")
    PILImage.fromarray(pred).save(pred_dir / "img.png")
    report = evaluate_folders(pred_dir, gt_dir)
    assert report.labels == {"label_1": 1}
    assert report.rows[0]["dice"] == pytest.approx(2 * 16 / (16 + 20))
    assert report.rows[0]["hd"] == pytest.approx(1.0)  # unit pixel spacing for pictures


def test_parallel_workers_give_the_same_rows(folders):
    parallel = evaluate_folders(*folders, labels=LABELS, workers=2).rows
    np.testing.assert_equal(parallel, evaluate_folders(*folders, labels=LABELS).rows)


def test_bad_options_raise_config_errors(folders):
    with pytest.raises(ConfigError, match="workers"):
        evaluate_folders(*folders, workers=0)
    with pytest.raises(ConfigError, match="background"):
        evaluate_folders(*folders, labels={"background": 0})
    with pytest.raises(DataError, match="does not exist"):
        evaluate_folders(folders[0] / "nope", folders[1])
    assert parse_labels("liver=1, tumour=2") == {"liver": 1, "tumour": 2}
    for text in ("liver", "liver=x", "liver=1,liver=2", " , "):
        with pytest.raises(ConfigError, match="labels"):
            parse_labels(text)


def test_gate_report_lists_selection_of_selecting_gates_only():
    model = build_model("unet2d", skip="st", features=(4, 8, 16), gate_levels="all")
    gates = model.skip_gates()
    with torch.no_grad():
        gates[0][1].select_weight.copy_(torch.tensor([-1.0, 0.0, 0.4, 2.0]))
    report = gate_report(model)
    assert [row["skip"] for row in report] == [name for name, _ in gates]
    first = report[0]
    assert (first["gate"], first["channels"], first["channels_off"]) == ("st", 4, 2)
    assert first["fraction_off"] == pytest.approx(0.5)
    assert first["selection"] == pytest.approx([0.0, 0.0, 0.4, 1.0])
    assert gate_report(build_model("unet2d", skip="sat", features=(4, 8)))[0]["gate"] == "sat"
    assert gate_report(build_model("unet2d", skip="at", features=(4, 8))) == []
    assert gate_table(report).row_count == len(gates)


def test_summary_table_has_one_row_per_class(folders):
    report = evaluate_folders(*folders, labels=LABELS)
    table = summary_table(report.summary)
    assert table.row_count == 2 and [c.header for c in table.columns][:3] == ["class", "label", "Dice"]


def test_cli_evaluate_prints_table_and_writes_outputs(folders, tmp_path):
    pred_dir, gt_dir = folders
    out_dir = tmp_path / "scores"
    args = ["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "-o", str(out_dir), "--labels", "liver=1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "liver" in result.stdout and "Dice" in result.stdout and "HD95" in result.stdout
    assert (out_dir / "per_case.csv").is_file() and (out_dir / "summary.json").is_file()
    as_json = CliRunner().invoke(app, [*args, "--json", "--tolerance", "2"])
    assert as_json.exit_code == 0
    printed = json.loads(as_json.stdout)
    assert printed == json.loads((out_dir / "summary.json").read_text()) and printed["tolerance_mm"] == 2.0


def test_cli_evaluate_defaults_output_to_pred_folder_and_reports_errors(folders):
    pred_dir, gt_dir = folders
    result = CliRunner().invoke(app, ["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--json"])
    assert result.exit_code == 0 and (pred_dir / "summary.json").is_file()
    bad = CliRunner().invoke(app, ["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--labels", "liver"])
    assert bad.exit_code == 1 and "error:" in bad.output and "--labels" in bad.output


def test_a_reader_returning_channel_first_images_is_accepted(folders):
    """The ``satseg.data.io.Image`` contract: ``array`` (1, *S), spacing per array axis, origin, direction."""

    class FakeImage:
        def __init__(self, array, spacing):
            self.array, self.spacing = array[None], spacing
            self.origin, self.direction = (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    arrays = {
        f"{case}{suffix}": pair[i]
        for case, pair in _cases().items()
        for i, suffix in ((0, ".nii.gz"), (1, "_seg.nrrd"))
    }
    spacing = (1.0, 2.0, 3.0)
    report = evaluate_folders(*folders, labels=LABELS, reader=lambda path: FakeImage(arrays[path.name], spacing))
    pred, ref = _cases()["case_b"]
    np.testing.assert_equal(
        report.rows[2],
        {"case": "case_b", "class": "liver", "label": 1, **case_metrics(pred, ref, LABELS, spacing)["liver"]},
    )


def test_folder_evaluation_writes_a_visual_report_worst_case_first(folders, tmp_path):
    pred_dir, gt_dir = folders
    report = evaluate_folders(pred_dir, gt_dir, tmp_path / "scores", labels={"liver": 1, "tumour": 2})
    per_case = {}
    for row in report.rows:
        if math.isfinite(row["dice"]):
            per_case.setdefault(row["case"], []).append(row["dice"])
    ranking = sorted(per_case, key=lambda case: np.mean(per_case[case]))
    folder = tmp_path / "scores" / "report"
    expected = [folder / "dice_per_case.png"] + [folder / f"worst_{i}_{c}.png" for i, c in enumerate(ranking, 1)]
    assert report.figures == expected
    for png in expected:
        with PILImage.open(png) as picture:
            picture.load()
            assert picture.format == "PNG" and picture.width >= 100 and picture.height >= 40
    # the report sits in a subfolder: scoring the same folder again still sees only the predictions
    again = evaluate_folders(pred_dir, gt_dir, pred_dir, labels={"liver": 1})
    evaluate_folders(pred_dir, gt_dir, None, labels={"liver": 1})
    assert {row["case"] for row in again.rows} == {"case_a", "case_b"}
