"""Model kinds as a registry: how each torch architecture is built from a bundle's record.

Each model file registers its builder once, at import::

    @register_architecture("mlp", config=MLPConfig, description="feature layers + linear head")
    def _build_mlp(meta: dict) -> nn.Module:
        ...

``meta`` is the bundle's ``model.json`` dict (``features``, ``net`` -- the architecture's
config dict --, ``n_out``, ``outputs`` and any kind-specific keys the model wrote).  A
:class:`~xgpp.models.bundle.TorchModel` holds any registered kind, and
:func:`xgpp.models.load_model` rebuilds it from ``ARCHITECTURES[meta["kind"]]``: adding a model
kind is adding a file, with no branch anywhere else.  This module imports no model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from xgpp.errors import InputError

__all__ = ["ARCHITECTURES", "Architecture", "build_module", "register_architecture"]


@dataclass(frozen=True)
class Architecture:
    """One registered torch model kind.

    Attributes
    ----------
    kind : str
        Key recorded as ``model.json["kind"]``.
    build : callable
        ``build(meta) -> torch.nn.Module`` (untrained weights of the right shapes).
    config : type, optional
        Dataclass of the architecture's settings (``to_dict``/``from_dict``), kept in
        ``model.json["net"]``.
    description : str
        One line for listings and errors.
    """

    kind: str
    build: Callable[[dict[str, Any]], Any]
    config: Any = None
    description: str = ""


#: kind -> :class:`Architecture`; filled by the model files at import (see :mod:`xgpp.models`).
ARCHITECTURES: dict[str, Architecture] = {}


def register_architecture(kind: str, *, config: type | None = None, description: str = ""
                          ) -> Callable[[Callable], Callable]:
    """Decorator registering ``build(meta) -> nn.Module`` as the builder of ``kind``."""

    def deco(build: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], Any]:
        if kind in ARCHITECTURES and ARCHITECTURES[kind].build is not build:
            raise InputError(f"model kind {kind!r} is already registered by "
                             f"{ARCHITECTURES[kind].build.__module__}.")
        ARCHITECTURES[kind] = Architecture(kind, build, config, description)
        return build

    return deco


def build_module(kind: str, meta: dict[str, Any]) -> Any:
    """Build the untrained module of ``kind`` from a bundle record ``meta``."""
    import xgpp.models  # noqa: F401 - the model files register themselves on import

    if kind not in ARCHITECTURES:
        from xgpp.models._format import BundleFormatError

        raise BundleFormatError(
            f"no torch architecture registered for bundle kind {kind!r}; this xgpp knows "
            f"{sorted(ARCHITECTURES)}. The bundle may come from a newer xgpp or a plugin that "
            "is not imported.")
    module = ARCHITECTURES[kind].build(meta)
    if meta.get("nonnegative"):  # the output floor the model was trained with
        from xgpp.models.outputs import NonNegative

        module = NonNegative.from_record(module, meta["nonnegative"])
    return module
