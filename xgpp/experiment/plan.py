"""The runs of an experiment: one record per (world, method, split, seed, SIF scale)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from xgpp.experiment.config import ExperimentConfig

__all__ = ["Run", "fold_for_seed", "plan_runs"]


@dataclass(frozen=True)
class Run:
    """One independent training-and-scoring run.

    ``split`` is a full spec with its fold (``"site-kfold:k=5,fold=1"``, with a
    ``";tracks:k=5,fold=1"`` part for methods that hold out track segments); ``kind`` names
    the split family for tables (``"site-kfold"``, ``"igbp"``, ``"blocks"``).
    """

    world: str
    method: str
    kind: str
    split: str
    seed: int
    sif_scale: float = 1.0

    @property
    def id(self) -> str:
        """Stable path-safe identifier, also the run's folder under ``OUT/runs``."""
        fold = re.search(r"fold=(\d+)", self.split)
        scale = "" if self.sif_scale == 1.0 else f"__sifx{self.sif_scale:g}"
        return (f"{self.world}/{self.method}__{self.kind}-f{fold.group(1) if fold else 0}"
                f"__s{self.seed}{scale}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def _kind(spec: str) -> str:
    from xgpp.splits import parse_split

    return type(parse_split(spec)[0]).kind


def fold_for_seed(n_folds: int, seed_index: int, n_seeds: int) -> int:
    """Fold trained by the ``seed_index``-th seed: spread evenly over the split's folds.

    Three seeds of a 5-fold split train folds 0, 1, 2; of a 13-class leave-one-class-out
    split folds 0, 4, 8; so the spread over seeds also spans where the held-out sites are.
    """
    stride = max(1, n_folds // max(n_seeds, 1))
    return (seed_index * stride) % n_folds


def plan_runs(cfg: ExperimentConfig, worlds: dict[str, Any], methods: list[str]) -> list[Run]:
    """Every run of the experiment, in the order they are run.

    ``worlds`` maps a world name to its (computed) sites Dataset (fold counts of the
    leave-IGBP-out split depend on the sites).  The first world gets every split in
    ``cfg.splits`` and the scale test; the others ``cfg.variant_splits``.  In ``quick`` mode
    every method runs on the first split and SIFTML and EC-only on the others.
    """
    from xgpp.splits import parse_split
    from xgpp.train import METHODS

    runs: list[Run] = []
    first = next(iter(worlds))
    for w, sites in worlds.items():
        splits = cfg.splits if w == first else cfg.variant_splits
        for si, spec in enumerate(splits):
            splitter, _ = parse_split(spec)
            n_folds = len(splitter.folds(sites))
            for ki, seed in enumerate(cfg.seeds):
                fold = fold_for_seed(n_folds, ki, len(cfg.seeds))
                sep = ":" if ":" not in spec else ","
                site_spec = f"{spec}{sep}fold={fold}"
                for m in methods:
                    if cfg.quick and si > 0 and m not in ("siftml", "ec-only"):
                        continue
                    rec = METHODS[m]
                    full = site_spec
                    if rec.track_split:
                        tk = cfg.tracks + ("," if ":" in cfg.tracks else ":")
                        full = f"{site_spec};{tk}fold={fold_for_seed(_track_folds(cfg), ki, len(cfg.seeds))}"
                    runs.append(Run(w, m, _kind(spec), full, int(seed)))
                if w == first and si == 0:
                    for m in cfg.scale_methods:
                        for f in cfg.sif_scales:
                            if f != 1.0 and m in methods:
                                runs.append(Run(w, m, _kind(spec), site_spec, int(seed), float(f)))
    return runs


def _track_folds(cfg: ExperimentConfig) -> int:
    m = re.search(r"k=(\d+)", cfg.tracks)
    return int(m.group(1)) if m else 5
