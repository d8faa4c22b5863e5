"""Networks: skip gates, blocks, backbones and the model registry."""

from satseg.nn.base import SegmentationNet
from satseg.nn.gates import (
    AttendGate,
    IdentityGate,
    SelectAttendGate,
    SelectGate,
    SkipGate,
    build_gate,
    list_gates,
    trelu,
)
from satseg.nn.registry import build_model, explicit_model_config, legacy_model_config, list_models, register_model

__all__ = [
    "SegmentationNet",
    "SkipGate",
    "IdentityGate",
    "SelectGate",
    "AttendGate",
    "SelectAttendGate",
    "build_gate",
    "list_gates",
    "trelu",
    "build_model",
    "list_models",
    "register_model",
    "explicit_model_config",
    "legacy_model_config",
]
