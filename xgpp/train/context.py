"""What a training method is handed: the cubes, the fold, the config, and shared steps.

:class:`TrainContext` carries everything :func:`xgpp.train.train` resolved (cubes, fold,
config, seed, device, output folder, progress bar) and the steps several methods share, each
computed once on first use: the feature normalisation, the checkpoint store, the
pre-training cache, and the split of the training sites into fitting and validation sites with
their samples.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import xarray as xr

from xgpp._strings import as_str
from xgpp.errors import InputError
from xgpp.models.features import FeatureSpec, columns_from_dataset
from xgpp.samples import site_samples
from xgpp.splits import Fold
from xgpp.train.checkpoints import Checkpoints
from xgpp.train.config import PhaseConfig, TrainConfig
from xgpp.train.loop import Batch, Progress, array_batches, run_phase

__all__ = ["SiteSplit", "TrainContext"]

#: (config section, field) that only change loading speed, left out of the resume fingerprint
_LOADER_ONLY = (("loader", "workers"), ("loader", "prefetch"), ("multitask", "cache_mib"))


@dataclass
class SiteSplit:
    """Training sites split into fitting and validation (early-stopping) sites.

    ``y_*`` are GPP [gC m-2 d-1] as ``(n, 1)`` float32; ``cls_*`` IGBP class numbers;
    ``gpp_mean``/``gpp_std`` the fitting sites' GPP moments that normalise the target.
    """

    samples: xr.Dataset
    fit_ids: np.ndarray
    val_ids: np.ndarray
    x_fit: np.ndarray
    y_fit: np.ndarray
    cls_fit: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    cls_val: np.ndarray
    gpp_mean: float
    gpp_std: float

    def normalise(self, y: np.ndarray) -> np.ndarray:
        """``(y - gpp_mean) / gpp_std`` as float32."""
        return ((y - self.gpp_mean) / self.gpp_std).astype(np.float32)

    def val_batch(self) -> Batch | None:
        """Validation rows ``{"x", "y"}`` (normalised GPP), or None without validation sites."""
        if not len(self.y_val):
            return None
        return {"x": self.x_val, "y": self.normalise(self.y_val)}


def sample_classes(samples) -> np.ndarray:
    """IGBP class number of each site sample (its ``igbp`` input, else its tower's code)."""
    from xgpp.landcover import code_to_class

    if "igbp" in samples:
        return samples["igbp"].values.astype(int)
    if "igbp_code" in samples.coords:
        return code_to_class(as_str(samples["igbp_code"].values)).astype(int)
    return np.zeros(samples.sizes["sample"], int)


def _site_arrays(samples: xr.Dataset, spec: FeatureSpec, ids: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sel = samples.isel(sample=np.flatnonzero(np.isin(as_str(samples["site"].values), ids)))
    cols = columns_from_dataset(sel, spec.inputs)
    x = spec.transform(cols)
    y = np.asarray(sel["gpp"].values, np.float32)[:, None]
    cls_ = sample_classes(sel)
    return x, y, cls_


@dataclass
class TrainContext:
    """Inputs of one training run, resolved by :func:`xgpp.train.train`.

    Attributes
    ----------
    method : str
    drivers, sites, sif : xarray.Dataset
        The cubes (``sites``/``sif`` None when the method needs none).
    config : TrainConfig
    fold : Fold, optional
        Sites held out (never seen in training).
    split : str, optional
        The split spec as given (methods with extra split parts, e.g. held-out tracks, parse
        their own part).
    seed : int
    device : torch.device
    out : str, optional
        Bundle folder (checkpoints under ``OUT/checkpoints``).
    provenance : dict
        Recorded in the bundle; methods add to it.
    cache_dir : str, optional
        Folder (or fsspec URL) of the pre-training cache
        (:mod:`xgpp.train.methods._cache`); None caches nothing.
    """

    method: str
    drivers: xr.Dataset
    sites: xr.Dataset | None
    sif: xr.Dataset | None
    config: TrainConfig
    fold: Fold | None
    split: str | None
    seed: int
    device: torch.device
    out: str | None
    storage_options: dict | None
    client: Any
    provenance: dict[str, Any]
    on_epoch_end: Callable[[dict], Any] | None = None
    cache_dir: str | None = None
    bar: Progress = field(default_factory=lambda: Progress(False))
    #: phase -> per-epoch records, filled by the phases as they run
    history: dict[str, list] = field(default_factory=dict)

    # ---- shared steps, each computed once
    @functools.cached_property
    def spec(self) -> FeatureSpec:
        """Feature normalisation fitted on the driver cube (streamed)."""
        return FeatureSpec.fit(self.config.features, self.drivers, stacklevel=5)

    @functools.cached_property
    def checkpoints(self) -> Checkpoints:
        """The run's checkpoint store; refuses a folder holding another run's checkpoints."""
        fingerprint = {k: self.provenance[k] for k in ("method", "seed", "config", "split",
                                                        "data")}
        # settings that change how fast batches arrive, not which: a resume may change them
        config = copy.deepcopy(fingerprint["config"])
        for section, key in _LOADER_ONLY:
            config.get(section, {}).pop(key, None)
        fingerprint["config"] = config
        for k in ("split_tracks",):
            if k in self.provenance:
                fingerprint[k] = self.provenance[k]
        return Checkpoints(self.out, fingerprint, self.storage_options)

    @functools.cached_property
    def pretrain_cache(self) -> Any:
        """The :class:`~xgpp.train.methods._cache.PretrainCache` at ``cache_dir`` (or None)."""
        if self.cache_dir is None:
            return None
        from xgpp.train.methods._cache import PretrainCache

        return PretrainCache(self.cache_dir, self.storage_options)

    def override(self, **changes: Any) -> TrainConfig:
        """Fix some config fields for this method (``strategy="head"``); return the config.

        The bundle's provenance and the checkpoint fingerprint record the config actually
        used.  Only before anything was computed from the config (first thing in ``fit``).
        """
        if {"spec", "checkpoints", "site_split"} & set(vars(self)):
            raise RuntimeError("TrainContext.override must come before the context computes "
                               "anything from the config (call it first in fit).")
        self.config = self.config.replace(**changes)
        self.provenance["config"] = self.config.to_dict()
        return self.config

    @functools.cached_property
    def site_split(self) -> SiteSplit:
        """Samples at the training sites, split into fitting and validation sites."""
        cfg, fold, seed = self.config, self.fold, self.seed
        assert self.sites is not None
        spec = self.spec
        samples = site_samples(self.drivers, self.sites, inputs=spec.inputs,
                               window=cfg.site_window, igbp_from=cfg.igbp_from, stacklevel=6)
        present = np.unique(as_str(samples["site"].values))
        train_ids = present if fold is None else np.intersect1d(present, np.asarray(fold.train))
        if len(train_ids) == 0:
            raise InputError(f"no training site has valid samples (fold "
                             f"{fold.name if fold else 'all'}: {len(fold.train) if fold else 0} "
                             f"training sites, {len(present)} sites with samples).")
        rng = np.random.default_rng([seed, 1])
        n_val = int(round(cfg.val_sites * len(train_ids))) if len(train_ids) >= 2 else 0
        n_val = min(max(n_val, 1 if cfg.val_sites > 0 and len(train_ids) >= 2 else 0),
                    len(train_ids) - 1)
        val_ids = (np.sort(rng.choice(train_ids, size=n_val, replace=False)) if n_val
                   else np.array([], str))
        fit_ids = np.setdiff1d(train_ids, val_ids)
        x_fit, y_fit, cls_fit = _site_arrays(samples, spec, fit_ids)
        x_val, y_val, cls_val = _site_arrays(samples, spec, val_ids)
        split = SiteSplit(samples, fit_ids, val_ids, x_fit, y_fit, cls_fit, x_val, y_val,
                          cls_val, float(y_fit.mean()), float(y_fit.std()) or 1.0)
        self.provenance["sites"] = {
            "fit": fit_ids.tolist(), "validation": val_ids.tolist(),
            "test": list(fold.test) if fold else [], "n_fit_samples": len(y_fit),
            "n_val_samples": len(y_val),
            "exclusions": json.loads(samples.attrs.get("exclusions", "{}"))}
        return split

    # ---- helpers
    def site_batches(self, phase: str, pc: PhaseConfig) -> Callable[[int], Iterator[Batch]]:
        """Shuffled batches of the fitting sites' normalised GPP for ``phase`` (seeded)."""
        import zlib

        s = self.site_split
        y = s.normalise(s.y_fit)
        return lambda epoch: array_batches(
            s.x_fit, y, pc.batch_size,
            np.random.default_rng([self.seed, zlib.crc32(phase.encode()), epoch]))

    def run_phase(self, phase: str, net: torch.nn.Module, pc: PhaseConfig, **kw: Any
                  ) -> list[dict[str, Any]]:
        """:func:`xgpp.train.loop.run_phase` with this run's checkpoints, seed, device, bar."""
        return run_phase(phase, net, pc=pc, ckpt=self.checkpoints, seed=self.seed,
                         device=self.device, bar=self.bar, on_epoch_end=self.on_epoch_end, **kw)

    def save(self, model: Any) -> Any:
        """Write ``model`` to ``out`` (when given) and return it."""
        if self.out is not None:
            model.save(self.out, storage_options=self.storage_options)
        return model
