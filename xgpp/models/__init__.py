"""xgpp models: the :class:`Model` protocol, the MLP, SIFTML and its baselines, and bundles.

``xgpp.load_model(path)`` reads any bundle written by ``model.save(path)``.
"""

from __future__ import annotations

# the model files register their architectures on import (xgpp.models.registry)
from xgpp.models import baselines as _baselines  # noqa: F401
from xgpp.models import moe as _moe  # noqa: F401
from xgpp.models.base import BUNDLE_FORMAT, OUTPUTS, Model
from xgpp.models.bundle import BundleFormatError, TorchModel, load_model
from xgpp.models.features import FeatureConfig, FeatureSpec
from xgpp.models.mlp import MLP, MLPConfig
from xgpp.models.registry import ARCHITECTURES, register_architecture

__all__ = [
    "ARCHITECTURES",
    "BUNDLE_FORMAT",
    "MLP",
    "OUTPUTS",
    "BundleFormatError",
    "FeatureConfig",
    "FeatureSpec",
    "MLPConfig",
    "Model",
    "TorchModel",
    "load_model",
    "register_architecture",
]
