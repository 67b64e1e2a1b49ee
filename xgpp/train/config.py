"""Training configuration: frozen dataclasses with one ``to_dict``/``from_dict``.

The whole :class:`TrainConfig` is recorded in every bundle and in the checkpoint fingerprint.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from xgpp.models.features import FeatureConfig
from xgpp.models.mlp import MLPConfig
from xgpp.models.siftml import STRATEGIES

__all__ = ["LoaderConfig", "PhaseConfig", "TrainConfig"]


class _Config:
    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (nested configs included)."""
        out = {}
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if hasattr(v, "to_dict") else (
                list(v) if isinstance(v, tuple) else v)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        """Inverse of :meth:`to_dict`; unknown keys raise ``TypeError``."""
        known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(d) - set(known)
        if unknown:
            raise TypeError(f"unknown {cls.__name__} field(s) {sorted(unknown)}; known: "
                            f"{sorted(known)}.")
        kwargs = {}
        for k, v in d.items():
            sub = _NESTED.get((cls.__name__, k))
            kwargs[k] = sub.from_dict(v) if sub is not None and isinstance(v, dict) else v
        return cls(**kwargs)


@dataclass(frozen=True)
class PhaseConfig(_Config):
    """One training phase.

    Attributes
    ----------
    max_epochs : int
        Upper limit of epochs.
    lr : float
        AdamW learning rate.
    batch_size : int
        Samples per step.
    patience : int
        Epochs without validation improvement before stopping early.
    weight_decay : float
        AdamW weight decay.
    samples_per_epoch : int, optional
        Grid phases only: samples per epoch (a random subset of chunks); None for full passes.
    """

    max_epochs: int = 20
    lr: float = 1e-3
    batch_size: int = 256
    patience: int = 5
    weight_decay: float = 0.0
    samples_per_epoch: int | None = None


@dataclass(frozen=True)
class LoaderConfig(_Config):
    """Streaming of grid samples for pre-training (see :class:`xgpp.samples.GridSamples`).

    Attributes
    ----------
    shuffle_buffer : int
        Shuffle-buffer capacity [samples].
    prefetch : int
        Chunks loaded ahead.
    workers : int
        Loader threads.
    val_fraction : float
        Fraction of spatial blocks held out for SIF validation.
    val_block : float
        Edge of those blocks [degree].
    max_val_samples : int
        Cap on validation pixels kept in memory.
    """

    shuffle_buffer: int = 262_144
    prefetch: int = 4
    workers: int = 2
    val_fraction: float = 0.1
    val_block: float = 10.0
    max_val_samples: int = 200_000


@dataclass(frozen=True)
class TrainConfig(_Config):
    """Everything that defines a training run (recorded in the bundle).

    Attributes
    ----------
    features : FeatureConfig
    net : MLPConfig
    pretrain : PhaseConfig
        SIF pre-training on grid pixels.
    head : PhaseConfig
        Fine-tuning of a new head on frozen feature layers.
    finetune : PhaseConfig
        Fine-tuning of all layers (lower learning rate).
    ec : PhaseConfig
        EC-only training from scratch.
    strategy : {"head", "full", "both"}
        SIFTML fine-tuning strategy.
    loader : LoaderConfig
    val_sites : float
        Fraction of training sites held out for early stopping.
    site_window : int
        Window (cells) averaged around each site's cell.
    igbp_from : {"site", "cell"}
        IGBP class of site samples from tower metadata or from the grid cell.
    sif_var : str
        SIF variable in the SIF cube.
    sif_conversion : {"global", "igbp"}
        SIF-only baseline: one slope, or one per IGBP class.
    min_class_samples : int
        Fewest site samples for a per-class slope.
    """

    features: FeatureConfig = field(default_factory=FeatureConfig)
    net: MLPConfig = field(default_factory=MLPConfig)
    pretrain: PhaseConfig = field(default_factory=lambda: PhaseConfig(
        max_epochs=10, lr=1e-3, batch_size=4096, patience=3))
    head: PhaseConfig = field(default_factory=lambda: PhaseConfig(
        max_epochs=40, lr=3e-3, batch_size=256, patience=6))
    finetune: PhaseConfig = field(default_factory=lambda: PhaseConfig(
        max_epochs=40, lr=3e-4, batch_size=256, patience=6))
    ec: PhaseConfig = field(default_factory=lambda: PhaseConfig(
        max_epochs=100, lr=1e-3, batch_size=256, patience=10))
    strategy: str = "both"
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    val_sites: float = 0.2
    site_window: int = 1
    igbp_from: str = "site"
    sif_var: str = "sif"
    sif_conversion: str = "igbp"
    min_class_samples: int = 20

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy={self.strategy!r}; use one of {sorted(STRATEGIES)}.")
        if self.sif_conversion not in ("global", "igbp"):
            raise ValueError(f"sif_conversion={self.sif_conversion!r}; use 'global' or 'igbp'.")
        if not 0 <= self.val_sites < 1:
            raise ValueError(f"val_sites={self.val_sites} must lie in [0, 1).")

    def replace(self, **changes: Any) -> TrainConfig:
        """Return a copy with some fields changed."""
        from dataclasses import replace

        return replace(self, **changes)


_NESTED: dict[tuple[str, str], Any] = {
    ("TrainConfig", "features"): FeatureConfig, ("TrainConfig", "net"): MLPConfig,
    ("TrainConfig", "pretrain"): PhaseConfig, ("TrainConfig", "head"): PhaseConfig,
    ("TrainConfig", "finetune"): PhaseConfig, ("TrainConfig", "ec"): PhaseConfig,
    ("TrainConfig", "loader"): LoaderConfig,
}
