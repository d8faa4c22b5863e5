"""Synthetic images for the data tests (tiny, made in memory)."""

import numpy as np
import SimpleITK as sitk


def oblique_image(array: np.ndarray, spacing=(0.7, 0.9, 2.5), origin=(10.0, -3.0, 5.0)) -> sitk.Image:
    """A SimpleITK image with an oblique direction and anisotropic spacing (spacing in x, y, z)."""
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(sitk.VersorTransform((0.3, 0.2, 0.9), 0.4).GetMatrix())
    return img


def blob_case(rng: np.random.Generator, shape=(10, 12, 14), margin=2):
    """An image with a zero border (so cropping happens) and a two-label mask inside it."""
    image = np.zeros(shape, np.float32)
    inner = tuple(slice(margin, s - margin) for s in shape)
    image[inner] = rng.normal(100, 20, size=[s - 2 * margin for s in shape]).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    zz, yy, xx = np.indices(shape)
    centre = [s / 2 for s in shape]
    dist = ((zz - centre[0]) / 3) ** 2 + ((yy - centre[1]) / 3.5) ** 2 + ((xx - centre[2]) / 4) ** 2
    label[dist < 1] = 1
    label[(dist < 1) & (xx > centre[2])] = 2
    return image, label
