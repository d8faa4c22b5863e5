"""Backbones; importing this package registers every builder with :mod:`satseg.nn.registry`."""

from satseg.nn.backbones.unet import UNet

__all__ = ["UNet"]
