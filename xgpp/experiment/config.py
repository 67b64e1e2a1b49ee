"""What an experiment runs: worlds, methods, splits, seeds and SIF scales, as one frozen record."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from xgpp.errors import InputError, UnknownOptionError

__all__ = ["QUICK_TRAIN", "ExperimentConfig"]

#: training config of ``--quick`` (tiny networks, few epochs): smoke checks, not results
QUICK_TRAIN: dict[str, Any] = {
    "net": {"hidden": [32, 32]},
    "pretrain": {"max_epochs": 2, "batch_size": 512, "lr": 3e-3, "patience": 2,
                 "samples_per_epoch": 20_000},
    "head": {"max_epochs": 3, "lr": 3e-3, "batch_size": 256},
    "finetune": {"max_epochs": 2, "lr": 1e-3, "batch_size": 256},
    "ec": {"max_epochs": 5, "lr": 3e-3, "batch_size": 256},
    "loader": {"shuffle_buffer": 20_000, "val_block": 20.0, "val_fraction": 0.2,
               "max_val_samples": 20_000},
    "moe": {"n_experts": 3, "expert_hidden": [32], "tower_hidden": [16]},
    "multitask": {"phase": {"max_epochs": 3, "batch_size": 512, "lr": 3e-3, "patience": 3,
                            "samples_per_epoch": 20_000}, "min_pairs": 5},
}


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines one experiment (written to ``OUT/experiment.json``).

    Attributes
    ----------
    worlds : tuple of str
        Named twin-world variants (:data:`xgpp.synthetic.VARIANTS`); each is generated once
        under ``OUT/worlds/NAME``.  Ignored when the experiment is given a catalog.
    resolution : float
        World grid spacing [degree].
    years : int
        Length of the record [years], ending 31 December of ``end_year``.
    end_year : int
        Last year of the record.
    seeds : tuple of int
        Training seeds.  Each seed also picks a different fold of every split (spread over
        the split's folds), so the spread over seeds holds initialisation and site sampling.
    methods : tuple of str, optional
        Training-registry names; None runs every registered method.
    splits : tuple of str
        Site splits on the first world, without ``fold=`` (it comes from the seed).
    variant_splits : tuple of str
        Site splits on the other worlds (fewer, to bound the run count).
    tracks : str
        Held-out SIF track segments for the methods that take a ``tracks:`` split.
    sif_scales : tuple of float
        Scale test: factors the SIF product is multiplied by before pre-training.
    scale_methods : tuple of str
        Methods run at every SIF scale (first world, first split).
    train : dict
        :class:`xgpp.train.TrainConfig` overrides (nested dicts) for every run.
    parallel : int
        Runs in flight at once, each in its own process with ``cores // parallel`` threads.
    site_series : int
        Held-out sites whose series are kept for the seasonal-cycle figure.
    pairs : int
        Pixel-steps sampled (seeded) per run for the density scatter.
    quick : bool
        A smoke run: one world, one seed, every method on the first split and two methods on
        the others, tiny networks (:data:`QUICK_TRAIN`).
    """

    worlds: tuple[str, ...] = ("default", "uniform_slope", "no_tropical_sites", "seed1",
                               "slope_spread")
    resolution: float = 1.0
    years: int = 10
    end_year: int = 2020
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] | None = None
    splits: tuple[str, ...] = ("site-kfold:k=5", "igbp", "blocks:block=20,buffer=2,k=5")
    variant_splits: tuple[str, ...] = ("site-kfold:k=5",)
    tracks: str = "tracks:k=5"
    sif_scales: tuple[float, ...] = (0.5, 1.0, 2.0)
    scale_methods: tuple[str, ...] = ("siftml",)
    train: dict[str, Any] = field(default_factory=dict)
    parallel: int = 1
    site_series: int = 4
    pairs: int = 100_000
    quick: bool = False

    def __post_init__(self) -> None:
        if not self.seeds:
            raise InputError("ExperimentConfig.seeds is empty: give at least one seed.")
        if not self.splits:
            raise InputError("ExperimentConfig.splits is empty: give at least one site split, "
                             "e.g. 'site-kfold:k=5'.")
        for s in (*self.splits, *self.variant_splits):
            if "fold=" in s:
                raise InputError(f"split {s!r} names a fold: the experiment picks the fold from "
                                 "the seed; drop 'fold=...'.")
        if any(not f > 0 for f in self.sif_scales):
            raise InputError(f"sif_scales={self.sif_scales!r}: factors must be > 0.")
        if self.parallel < 1:
            raise InputError(f"parallel={self.parallel} must be >= 1.")

    @classmethod
    def quick_config(cls, **changes: Any) -> ExperimentConfig:
        """The ``--quick`` experiment: 5 degree, 2017-2020, one seed, tiny networks."""
        base: dict[str, Any] = dict(worlds=("default",), resolution=5.0, years=4, seeds=(0,),
                    splits=("site-kfold:k=4", "igbp", "blocks:block=30,buffer=0,k=4"),
                    variant_splits=(), tracks="tracks:k=4", sif_scales=(0.5, 1.0, 2.0),
                    train=QUICK_TRAIN, parallel=2, site_series=3, pairs=20_000, quick=True)
        base.update(changes)
        return cls(**base)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExperimentConfig:
        """Build from :meth:`to_dict` output; unknown keys raise naming the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UnknownOptionError(f"unknown ExperimentConfig field(s) {sorted(unknown)}; known: "
                            f"{sorted(known)}")
        tuples = {f.name for f in fields(cls) if str(f.type).startswith("tuple")}
        args: dict[str, Any] = {k: (tuple(v) if k in tuples and v is not None else v)
                                for k, v in d.items()}
        return cls(**args)

    @classmethod
    def from_file(cls, path: str) -> ExperimentConfig:
        """Read a JSON file holding :meth:`to_dict` output (a subset of fields is fine)."""
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def replace(self, **changes: Any) -> ExperimentConfig:
        """Copy with some fields changed."""
        return replace(self, **changes)
