"""Training methods as a registry: one file per method, each a registered :class:`Method`.

A method file defines ``fit(ctx: TrainContext) -> Model`` and registers it::

    @register_method("ec-only", needs_sites=True, sif_product=None,
                     description="the SIFTML network trained on site GPP alone")
    def fit(ctx):
        ...

:func:`xgpp.train.train`, the CLI's ``--method`` help, the demo and the experiment read the
method list from :data:`METHODS`; adding a method is adding a file here (and one import line
below).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from xgpp.errors import InputError

__all__ = ["METHODS", "Method", "get_method", "register_method"]


@dataclass(frozen=True)
class Method:
    """One registered training method.

    Attributes
    ----------
    name : str
        ``--method`` name.
    fit : callable
        ``fit(ctx: TrainContext) -> Model``.
    description : str
        One line for ``--help`` and listings.
    needs_sites : bool
        Trains on EC site GPP (and takes a site split).
    sif_product : str, optional
        Catalog entry of the SIF cube it trains on by default (``"sif_tropomi"`` for
        full-coverage SIF, ``"sif_oco2"`` for sparse tracks); None when it needs no SIF.
    outputs : tuple of str
        Variables its models predict.
    config_sections : tuple of str
        The :class:`~xgpp.train.config.TrainConfig` fields it reads.
    track_split : bool
        Takes a ``tracks:`` part of the split (held-out SIF track segments).
    comparison : str
        The study comparison it belongs to: ``"transfer"`` (SIFTML and its baselines, on
        full-coverage SIF), ``"transfer-variant"`` (the other ways of transferring the SIF
        network to GPP: ``siftml-head``, ``siftml-l2sp``, ``sif-only-global``, ...) or
        ``"multitask"`` (the MoE and its single-task baselines, on sparse tracks).
    """

    name: str
    fit: Callable[[Any], Any]
    description: str = ""
    needs_sites: bool = True
    sif_product: str | None = None
    outputs: tuple[str, ...] = ("gpp",)
    config_sections: tuple[str, ...] = field(default_factory=tuple)
    track_split: bool = False
    comparison: str = "transfer"

    @property
    def needs_sif(self) -> bool:
        """Whether it needs a SIF cube."""
        return self.sif_product is not None


#: name -> :class:`Method`, in registration order
METHODS: dict[str, Method] = {}


def register_method(name: str, **record: Any) -> Callable[[Callable], Callable]:
    """Decorator registering ``fit(ctx)`` as method ``name`` (see :class:`Method`)."""

    def deco(fit: Callable[[Any], Any]) -> Callable[[Any], Any]:
        if name in METHODS and METHODS[name].fit is not fit:
            raise InputError(f"training method {name!r} is already registered by "
                             f"{METHODS[name].fit.__module__}.")
        METHODS[name] = Method(name, fit, **record)
        return fit

    return deco


def get_method(name: str) -> Method:
    """The registered method ``name``; an unknown name raises, listing the valid ones."""
    if name not in METHODS:
        raise InputError(f"unknown method={name!r}; use one of {list(METHODS)} "
                         "(xgpp.train.METHODS).")
    return METHODS[name]


# the method files register themselves (order = listing order)
from xgpp.train.methods import siftml, ec_only, sif_only, pmodel  # noqa: E402, F401, I001
from xgpp.train.methods import moe, single_task  # noqa: E402, F401, I001
from xgpp.train.methods import siftml_variants, sif_only_global  # noqa: E402, F401, I001
from xgpp.train.methods import siftml_sifinput, siftml_gppconv  # noqa: E402, F401, I001
