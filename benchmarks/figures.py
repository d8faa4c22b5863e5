"""The paper's Figures 5-7 from the trained benchmark models (seed 0), drawn with Pillow.

* Figure 5: channels of the first skip of the 2D U-Net (SAT) on a PH2 test image, before and after the
  channel selection ``f * trelu(W)``, each with its weight ``W``.
* Figure 6: attention maps of the first two skips of the 2D U-Net, AT vs SAT, on two PH2 test images,
  with the prediction and the ground truth.
* Figure 7: the same for the 3D V-Net on two hippocampus test cases (the axial slice with the most label).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from profiles import Profile
from runner import preprocessed_dir, test_cases
from torch.nn import functional as F

from satseg.data.store import load_case
from satseg.inference.sliding_window import sliding_window_inference
from satseg.nn.gates import trelu
from satseg.runs import load_run

__all__ = ["make_figures"]

TILE = 128
LABEL_COLOURS = np.array([[0, 0, 0], [230, 60, 60], [60, 200, 80], [80, 120, 240]], dtype=np.uint8)


def _heat(values: np.ndarray) -> np.ndarray:
    """Map ``[0, 1]`` to a blue-cyan-yellow-red colour ramp, ``(H, W, 3)`` uint8."""
    v = np.clip(values, 0, 1)[..., None]
    stops = np.array([[0, 0, 120], [0, 160, 230], [250, 230, 40], [220, 20, 20]], dtype=float)
    pos = v * (len(stops) - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, len(stops) - 2)
    frac = pos - lo
    return (stops[lo[..., 0]] * (1 - frac) + stops[lo[..., 0] + 1] * frac).astype(np.uint8)


def _grey(image: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    lo = float(np.percentile(image, 1)) if lo is None else lo
    hi = float(np.percentile(image, 99)) if hi is None else hi
    g = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    return (np.stack([g] * 3, -1) * 255).astype(np.uint8)


def _display(image: np.ndarray) -> np.ndarray:
    """A preprocessed image ``(C, H, W)`` as RGB uint8 (RGB kept, one channel as grey)."""
    if image.shape[0] == 3:
        rgb = np.stack([_grey(c)[..., 0] for c in image], -1)
        return rgb
    return _grey(image[0])


def _overlay(base: np.ndarray, labels: np.ndarray) -> np.ndarray:
    out = base.astype(float)
    mask = labels > 0
    out[mask] = 0.45 * out[mask] + 0.55 * LABEL_COLOURS[np.clip(labels[mask], 0, 3)]
    return out.astype(np.uint8)


def _tile(rgb: np.ndarray, caption: str = "") -> Image.Image:
    h, w = rgb.shape[:2]
    scale = TILE / max(h, w)
    img = Image.fromarray(rgb).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.NEAREST)
    canvas = Image.new("RGB", (TILE, TILE + 14), "white")
    canvas.paste(img, ((TILE - img.width) // 2, 14 + (TILE - img.height) // 2))
    ImageDraw.Draw(canvas).text((2, 1), caption, fill="black")
    return canvas


def _grid(rows: list[list[Image.Image]], row_titles: list[str], title: str) -> Image.Image:
    left, top = 150, 22
    width = left + max(len(r) for r in rows) * (TILE + 4)
    height = top + len(rows) * (TILE + 18)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 4), title, fill="black")
    for i, (row, name) in enumerate(zip(rows, row_titles, strict=True)):
        y = top + i * (TILE + 18)
        draw.text((4, y + TILE // 2), name, fill="black")
        for j, tile in enumerate(row):
            sheet.paste(tile, (left + j * (TILE + 4), y))
    return sheet


def _model(cache: Path, profile: Profile, name: str):
    model, _ = load_run(cache / "runs" / profile.name / name, "last")
    return model.eval()


def _attention_panels(model, image: np.ndarray, gates: int, patch, k: int):
    """Attention maps of the first ``gates`` skips (upsampled to the image) and the prediction."""
    model.keep_attention(True)
    x = torch.from_numpy(image)
    pad = [(-s) % model.input_divisor for s in x.shape[1:]]
    xp = F.pad(x, [p for s in reversed(pad) for p in (0, s)])[None]
    with torch.no_grad():
        model(xp)
    maps = []
    for _, gate in model.skip_gates()[:gates]:
        att = gate.last_attention[0:1].float()
        att = F.interpolate(att, size=xp.shape[2:], mode="nearest")[0, 0]
        maps.append(att[tuple(slice(0, s) for s in x.shape[1:])].numpy())
    model.keep_attention(False)
    pred = sliding_window_inference(model, x, patch, k, overlap=0.5).labels.numpy()
    return maps, pred


def fig_selection(profile: Profile, out: Path, cache: Path, preprocessed: Path) -> str:
    model = _model(cache, profile, "ph2-unet-sat-s0")
    case = test_cases(profile.datasets["ph2"], preprocessed)[0]
    image, _, _ = load_case(preprocessed, case)
    name, gate = model.skip_gates()[0]
    seen = {}
    handle = gate.register_forward_pre_hook(lambda _m, args: seen.setdefault("f", args[0].detach()))
    with torch.no_grad():
        model(torch.from_numpy(image)[None])
    handle.remove()
    f = seen["f"][0].numpy()
    w = trelu(gate.select_weight.detach()).numpy()
    top, bottom = [], []
    for c in range(min(8, f.shape[0])):
        lo, hi = float(f[c].min()), float(f[c].max())
        top.append(_tile(_grey(f[c], lo, hi), f"channel {c}"))
        bottom.append(_tile(_grey(f[c] * w[c], lo, hi), f"W = {w[c]:.2f}"))
    sheet = _grid(
        [top, bottom],
        ["before selection", "after selection"],
        f"Fig. 5: 2D U-Net (SAT), skip `{name}`, PH2 test case {case}; same grey scale per channel in both rows",
    )
    path = out / "fig5_selection.png"
    sheet.save(path)
    return f"`{path.name}`: {name} of ph2-unet-sat-s0 on {case}; {int((w == 0).sum())}/{len(w)} channels off"


def fig_attention(profile: Profile, out: Path, cache: Path, preprocessed: Path, ds: str, net: str, fig: int) -> str:
    plan_k = None
    cases = test_cases(profile.datasets[ds], preprocessed)
    patch = tuple(profile.train[ds]["patch"])
    chosen = []
    for case in cases:  # two cases with clearly visible targets
        image, label, _ = load_case(preprocessed, case)
        if label is not None and label.sum() > 0:
            chosen.append(case)
        if len(chosen) == 2:
            break
    rows, titles = [], []
    for case in chosen:
        image, label, _ = load_case(preprocessed, case)
        plan_k = int(label.max()) + 1 if plan_k is None else plan_k
        for skip in ("at", "sat"):
            model = _model(cache, profile, f"{ds}-{net}-{skip}-s0")
            k = model.out_channels
            maps, pred = _attention_panels(model, image, 2, patch, k)
            if image.ndim == 4:  # 3D: the axial slice with the most label
                z = int(np.argmax((label > 0).reshape(label.shape[0], -1).sum(1)))
                img2, lab2, pred2, maps2 = image[:, z], label[z], pred[z], [m[z] for m in maps]
            else:
                img2, lab2, pred2, maps2 = image, label, pred, maps
            base = _display(img2)
            row = [_tile(base, case)]
            for i, m in enumerate(maps2):
                blend = (0.35 * base + 0.65 * _heat(m)).astype(np.uint8)
                row.append(_tile(blend, f"skip {i} att. {m.min():.2f}-{m.max():.2f}"))
            row += [_tile(_overlay(base, pred2), "prediction"), _tile(_overlay(base, lab2), "ground truth")]
            rows.append(row)
            titles.append(f"{skip.upper()}, {case}")
    dims = "2D" if ds == "ph2" else "3D"
    sheet = _grid(
        rows,
        titles,
        f"Fig. {fig}: attention maps of the first two skips, {dims} {net} AT vs SAT (seed 0), {ds} test cases",
    )
    path = out / f"fig{fig}_attention_{dims.lower()}.png"
    sheet.save(path)
    return f"`{path.name}`: {ds}-{net} AT vs SAT, cases {', '.join(chosen)}"


def make_figures(profile: Profile, out: Path, cache: Path) -> list[str]:
    """Draw Figures 5-7 into ``out``; returns one line per figure."""
    pre = {ds: preprocessed_dir(spec, cache) for ds, spec in profile.datasets.items()}
    lines = []
    for make in (
        lambda: fig_selection(profile, out, cache, pre["ph2"]),
        lambda: fig_attention(profile, out, cache, pre["ph2"], "ph2", "unet", 6),
        lambda: fig_attention(profile, out, cache, pre["hippocampus"], "hippocampus", "vnet", 7),
    ):
        try:
            lines.append(make())
        except Exception as err:  # a missing checkpoint leaves that figure out, not the others
            lines.append(f"(figure not made: {type(err).__name__}: {err})")
    return lines
