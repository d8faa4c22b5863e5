"""Backbones; importing this package registers every builder with :mod:`satseg.nn.registry`."""

from satseg.nn.backbones.di2in import DI2IN
from satseg.nn.backbones.tiramisu import Tiramisu
from satseg.nn.backbones.unet import UNet
from satseg.nn.backbones.vnet import VNet

__all__ = ["UNet", "VNet", "Tiramisu", "DI2IN"]
