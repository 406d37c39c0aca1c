"""irevnet: i-RevNets (Jacobsen et al., ICLR 2018) from training to TensorRT engines.

Importing the package does not import torch: `irevnet.runtime` runs on deployment machines that
have only numpy and ONNX Runtime or TensorRT. The model API is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .model.config import ConfigError, IRevNetConfig, get_config, list_presets

__all__ = ["ConfigError", "IRevNet", "IRevNetConfig", "__version__", "create_model", "get_config", "list_presets"]

if TYPE_CHECKING:
    from .model.network import IRevNet, create_model

_LAZY = {"IRevNet": "model.network", "create_model": "model.network"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'irevnet' has no attribute {name!r}")
