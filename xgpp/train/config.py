"""Training configuration: frozen dataclasses with one ``to_dict``/``from_dict``.

The whole :class:`TrainConfig` is recorded in every bundle and in the checkpoint fingerprint.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from xgpp.errors import InputError, UnknownOptionError
from xgpp.models.features import FeatureConfig
from xgpp.models.mlp import MLPConfig
from xgpp.models.moe import MoEConfig
from xgpp.models.siftml import STRATEGIES

__all__ = ["LoaderConfig", "MultiTaskConfig", "PhaseConfig", "TrainConfig", "TransferConfig"]


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
            raise UnknownOptionError(f"unknown {cls.__name__} field(s) {sorted(unknown)}; known: "
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
class MultiTaskConfig(_Config):
    """The multi-task MoE and its single-task baselines on sparse SIF tracks.

    Attributes
    ----------
    phase : PhaseConfig
        Epochs, learning rate, batch size, patience; ``samples_per_epoch`` caps the rows of an
        epoch (None: one pass over the training soundings).
    proportions : tuple of float
        Shares of each batch drawn from (track soundings, site samples, unlabelled pixels).
    sif_weight, gpp_weight, physics_weight : float
        Weights of the masked SIF loss, the masked GPP loss and the SIF-GPP physics term.
    sif_weighting : {"count", "none"}
        Weight SIF rows by their sounding count (relative to the mean), or uniformly.
    slopes : {"fitted", "learnable"}
        Physics term slopes ``a_k``: fitted at training towers where training tracks pass
        (fixed), or learnt within :data:`xgpp.sif_gpp.SLOPE_BOUNDS` starting from the fit.
    min_pairs : int
        Fewest tower-sounding pairs for a class's own slope.
    track_val : float
        Fraction of the training track segments held out for early stopping.
    segment : float
        Length of a track segment [degree of latitude] (the unit held out).
    max_val_soundings : int
        Cap on validation soundings kept in memory.
    shuffle_buffer : int
        Shuffle-buffer capacity of the mixed loader [rows].
    cache_mib : float
        Memory budget [MiB] for rows kept across epochs by the mixed loader (the track rows
        and unlabelled pool of each chunk), so later epochs decode no chunk; chunks beyond
        it are decoded every epoch (see :class:`xgpp.tracks.MixedSamples`).
    """

    phase: PhaseConfig = field(default_factory=lambda: PhaseConfig(
        max_epochs=30, lr=1e-3, batch_size=1024, patience=5, samples_per_epoch=262_144))
    proportions: tuple[float, float, float] = (0.5, 0.25, 0.25)
    sif_weight: float = 1.0
    gpp_weight: float = 1.0
    physics_weight: float = 0.1
    sif_weighting: str = "count"
    slopes: str = "fitted"
    min_pairs: int = 20
    track_val: float = 0.1
    segment: float = 10.0
    max_val_soundings: int = 100_000
    shuffle_buffer: int = 65_536
    cache_mib: float = 1024.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "proportions", tuple(float(p) for p in self.proportions))
        if len(self.proportions) != 3 or min(self.proportions) < 0 or not sum(
                self.proportions) > 0:
            raise InputError(f"proportions={self.proportions!r}: give three non-negative shares "
                             "(track, site, unlabelled) with a positive sum.")
        for name in ("sif_weight", "gpp_weight", "physics_weight"):
            if getattr(self, name) < 0:
                raise InputError(f"{name}={getattr(self, name)} must be >= 0.")
        if self.sif_weighting not in ("count", "none"):
            raise InputError(f"sif_weighting={self.sif_weighting!r}; use 'count' or 'none'.")
        if self.slopes not in ("fitted", "learnable"):
            raise InputError(f"slopes={self.slopes!r}; use 'fitted' or 'learnable'.")
        if not 0 <= self.track_val < 1:
            raise InputError(f"track_val={self.track_val} must lie in [0, 1).")


@dataclass(frozen=True)
class TransferConfig(_Config):
    """Settings of the SIFTML transfer-learning variants (see ``docs/siftml.md``).

    Attributes
    ----------
    l2sp_alpha : float
        ``siftml-l2sp``: weight of ``alpha / 2 * ||w - w_pretrained||^2`` over the feature
        layers' parameters (L2-SP; Li, Grandvalet & Davoine 2018) [per squared weight, in
        units of the normalised GPP loss].
    l2sp_beta : float
        ``siftml-l2sp``: weight of ``beta / 2 * ||w_head||^2`` over the new head.
    frozen_layers : int
        ``strategy="frozen"`` (``siftml-frozen``): how many hidden layers, input side first,
        keep their pre-trained weights (0 frees all, like ``"both"``).
    """

    l2sp_alpha: float = 0.01
    l2sp_beta: float = 0.01
    frozen_layers: int = 1

    def __post_init__(self) -> None:
        for name in ("l2sp_alpha", "l2sp_beta"):
            if not getattr(self, name) >= 0:
                raise InputError(f"{name}={getattr(self, name)} must be >= 0.")
        if int(self.frozen_layers) != self.frozen_layers or self.frozen_layers < 0:
            raise InputError(f"frozen_layers={self.frozen_layers!r} must be a whole number "
                             ">= 0 (hidden layers kept frozen).")
        object.__setattr__(self, "frozen_layers", int(self.frozen_layers))


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
    strategy : {"head", "full", "both", "frozen"}
        SIFTML fine-tuning strategy (:data:`xgpp.models.siftml.STRATEGIES`).
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
    moe : MoEConfig
        Architecture of the multi-task MoE (and of its single-task baselines).
    multitask : MultiTaskConfig
        Batches, losses and validation of the MoE methods.
    transfer : TransferConfig
        The SIFTML variants' settings (L2-SP weights, frozen layers).
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
    moe: MoEConfig = field(default_factory=MoEConfig)
    multitask: MultiTaskConfig = field(default_factory=MultiTaskConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise InputError(f"strategy={self.strategy!r}; use one of {sorted(STRATEGIES)}.")
        if self.sif_conversion not in ("global", "igbp"):
            raise InputError(f"sif_conversion={self.sif_conversion!r}; use 'global' or 'igbp'.")
        if not 0 <= self.val_sites < 1:
            raise InputError(f"val_sites={self.val_sites} must lie in [0, 1).")
        if self.transfer.frozen_layers > len(self.net.hidden):
            raise InputError(f"transfer.frozen_layers={self.transfer.frozen_layers} but the "
                             f"network has {len(self.net.hidden)} hidden layers (net.hidden="
                             f"{self.net.hidden}); use at most {len(self.net.hidden)}.")

    def replace(self, **changes: Any) -> TrainConfig:
        """Return a copy with some fields changed."""
        from dataclasses import replace

        return replace(self, **changes)


_NESTED: dict[tuple[str, str], Any] = {
    ("TrainConfig", "features"): FeatureConfig, ("TrainConfig", "net"): MLPConfig,
    ("TrainConfig", "pretrain"): PhaseConfig, ("TrainConfig", "head"): PhaseConfig,
    ("TrainConfig", "finetune"): PhaseConfig, ("TrainConfig", "ec"): PhaseConfig,
    ("TrainConfig", "loader"): LoaderConfig, ("TrainConfig", "moe"): MoEConfig,
    ("TrainConfig", "multitask"): MultiTaskConfig, ("MultiTaskConfig", "phase"): PhaseConfig,
    ("TrainConfig", "transfer"): TransferConfig,
}
