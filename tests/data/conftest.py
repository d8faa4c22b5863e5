"""Synthetic datasets for the data tests (made in tmp_path)."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
from synthetic import blob_case, oblique_image


@pytest.fixture
def msd_dataset(tmp_path):
    """MSD layout: 4 labelled cases, 1 test case, spacing (1, 1, 2) in x, y, z."""
    root = tmp_path / "msd"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):
        image, label = blob_case(rng, shape=(10 + i % 2, 12, 14))
        folder = "imagesTr" if i < 4 else "imagesTs"
        sitk.WriteImage(oblique_image(image, (1.0, 1.0, 2.0)), str(root / folder / f"case_{i}.nii.gz"))
        if i < 4:
            sitk.WriteImage(oblique_image(label, (1.0, 1.0, 2.0)), str(root / "labelsTr" / f"case_{i}.nii.gz"))
    meta = {"modality": {"0": "MRI"}, "labels": {"0": "background", "1": "anterior", "2": "posterior"}}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root
