"""Training: SIFTML (SIF pre-training, EC fine-tuning) and its baselines, from cubes.

:func:`train` is the plain function behind ``ds.gpp.train(...)`` and ``xgpp train``; it is
seeded and reproducible, stops early on validation sites (or validation pixel blocks for SIF
pre-training), writes a checkpoint after every epoch to ``out`` and resumes from it after an
interruption, and shows a progress bar with the losses.

Methods
-------
``"siftml"``    pre-train on SIF over the grid, fine-tune on site GPP (``config.strategy``).
``"ec-only"``   the same network trained on site GPP alone.
``"sif-only"``  the SIF pre-trained network plus a linear SIF -> GPP conversion fitted at the
                training sites (global or per-IGBP slope, ``config.sif_conversion``).
``"pmodel"``    pyrealm's P-model with default parameters (nothing is trained).
"""

from __future__ import annotations

import copy
import json
import math
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
import xarray as xr

from xgpp.models.base import OUTPUTS
from xgpp.models.baselines import PModelBaseline, SIFLinear, fit_sif_slopes
from xgpp.models.bundle import TorchModel, _fs, _json_default, versions
from xgpp.models.features import (
    FeatureConfig,
    FeatureSpec,
    columns_from_dataset,
    streaming_moments,
)
from xgpp.models.mlp import MLP, MLPConfig
from xgpp.models.siftml import STRATEGIES, new_head, set_trainable
from xgpp.predict import resolve_device as _resolve_auto
from xgpp.samples import GridSamples, site_samples, validation_cells
from xgpp.splits import Fold, parse_split

__all__ = [
    "METHODS",
    "LoaderConfig",
    "PhaseConfig",
    "TrainConfig",
    "resolve_device",
    "train",
    "train_from_catalog",
]

METHODS: tuple[str, ...] = ("siftml", "ec-only", "sif-only", "pmodel")
_NEEDS_SITES = {"siftml", "ec-only", "sif-only"}
_NEEDS_SIF = {"siftml", "sif-only"}


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------
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


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; anything else as given (checked)."""
    dev = torch.device(_resolve_auto(str(device)))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} asked for CUDA, but torch sees no GPU "
                           f"(torch {torch.__version__}). Use device='cpu' or 'auto'.")
    return dev


# --------------------------------------------------------------------------------------------
# checkpoints (safetensors + JSON, no pickle)
# --------------------------------------------------------------------------------------------
class _Checkpoints:
    """Per-phase checkpoints under ``OUT/checkpoints``; a no-op when ``out`` is None."""

    def __init__(self, out: str | None, fingerprint: dict[str, Any],
                 storage_options: dict | None = None) -> None:
        self.enabled = out is not None
        if not self.enabled:
            return
        self.fs, root = _fs(out, storage_options)
        self.root = f"{root.rstrip('/')}/checkpoints"
        self.fs.makedirs(self.root, exist_ok=True)
        run = f"{self.root}/run.json"
        text = json.dumps(fingerprint, sort_keys=True, default=str)
        if self.fs.exists(run):
            with self.fs.open(run, "r") as f:
                old = f.read()
            if old != text:
                diff = _first_difference(json.loads(old), json.loads(text))
                raise ValueError(
                    f"{out} holds checkpoints of a different training run (first difference: "
                    f"{diff}); resuming would mix two runs. Use a new --out folder, or delete "
                    f"{self.root} to start over."
                )
        else:
            with self.fs.open(run, "w") as f:
                f.write(text)

    def load(self, phase: str) -> dict[str, Any] | None:
        if not self.enabled or not self.fs.exists(f"{self.root}/{phase}.json"):
            return None
        from safetensors.torch import load as st_load

        with self.fs.open(f"{self.root}/{phase}.json", "r") as f:
            info = json.load(f)
        with self.fs.open(f"{self.root}/{phase}.safetensors", "rb") as f:
            tensors = st_load(f.read())
        if tensors.get("_crc") is not None and info.get("crc") != int(tensors["_crc"].item()):
            return None  # torn write: the JSON and tensors are from different epochs
        info["model"] = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        info["best"] = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        info["optim_tensors"] = {k[6:]: v for k, v in tensors.items() if k.startswith("optim.")}
        return info

    def save(self, phase: str, net: torch.nn.Module, opt: torch.optim.Optimizer,
             best: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        if not self.enabled:
            return
        from safetensors.torch import save as st_save

        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in
                   net.state_dict().items()}
        tensors.update({f"best.{k}": v.detach().cpu().contiguous() for k, v in best.items()})
        opt_state = opt.state_dict()
        scalars: dict[str, Any] = {}
        for idx, st in opt_state["state"].items():
            for k, v in st.items():
                if torch.is_tensor(v):
                    tensors[f"optim.{idx}.{k}"] = v.detach().cpu().contiguous()
                else:
                    scalars[f"{idx}.{k}"] = v
        crc = zlib.crc32(json.dumps(info, sort_keys=True, default=str).encode())
        tensors["_crc"] = torch.tensor(crc, dtype=torch.int64)
        info = {**info, "crc": crc, "optim_groups": opt_state["param_groups"],
                "optim_scalars": scalars}
        for name, payload, mode in ((f"{phase}.safetensors", st_save(tensors), "wb"),
                                    (f"{phase}.json", json.dumps(info, default=_json_default), "w")):
            tmp = f"{self.root}/.{name}.tmp"
            with self.fs.open(tmp, mode) as f:
                f.write(payload)
            self.fs.mv(tmp, f"{self.root}/{name}")


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else k)
    return f"{path}: {a!r} (checkpoint) vs {b!r} (now)"


def _restore_optimizer(opt: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in saved["optim_tensors"].items():
        idx, _, name = key.partition(".")
        state.setdefault(int(idx), {})[name] = v
    for key, v in saved.get("optim_scalars", {}).items():
        idx, _, name = key.partition(".")
        state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": saved["optim_groups"]})


# --------------------------------------------------------------------------------------------
# the epoch loop
# --------------------------------------------------------------------------------------------
class _Progress:
    """A rich progress bar with losses (or nothing)."""

    def __init__(self, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
                                TimeElapsedColumn(), console=Console(stderr=True))

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()

    def task(self, name: str, total: int) -> Any:
        if self.bar is None:
            return None
        return self.bar.add_task(name, total=total, loss="")

    def update(self, task: Any, *, completed: int, text: str) -> None:
        if self.bar is not None and task is not None:
            self.bar.update(task, completed=completed, loss=text)


def _phase_seed(seed: int, phase: str, epoch: int) -> int:
    return (int(seed) * 1_000_003 + zlib.crc32(phase.encode()) * 101 + int(epoch)) % (2**63)


def _array_batches(x: np.ndarray, y: np.ndarray, batch_size: int, rng: np.random.Generator
                   ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    order = rng.permutation(len(x))
    for i in range(0, len(x), batch_size):
        idx = order[i:i + batch_size]
        yield x[idx], y[idx]


def _evaluate(net: torch.nn.Module, data: tuple[np.ndarray, np.ndarray],
              device: torch.device) -> float:
    x, y = data
    net.eval()
    total = 0.0
    with torch.inference_mode():
        for i in range(0, len(x), 65_536):
            xb = torch.from_numpy(x[i:i + 65_536]).to(device)
            yb = torch.from_numpy(y[i:i + 65_536]).to(device)
            total += float(torch.sum((net(xb) - yb) ** 2))
    return total / max(1, y.size)


def _run_phase(phase: str, net: MLP, *, batches: Callable[[int], Iterator[tuple]],
               val: tuple[np.ndarray, np.ndarray] | None, pc: PhaseConfig, ckpt: _Checkpoints,
               seed: int, device: torch.device, bar: _Progress,
               on_epoch_end: Callable[[dict], Any] | None) -> list[dict[str, Any]]:
    """Train ``net`` for one phase with early stopping, checkpointing every epoch."""
    params = set_trainable(net, phase)
    opt = torch.optim.AdamW(params, lr=pc.lr, weight_decay=pc.weight_decay)
    start, best, bad, history = 0, math.inf, 0, []
    best_state = copy.deepcopy(net.state_dict())
    saved = ckpt.load(phase)
    if saved is not None:
        if saved["done"]:
            net.load_state_dict(saved["best"])
            return saved["history"]
        net.load_state_dict(saved["model"])
        _restore_optimizer(opt, saved)
        start, best, bad = saved["epoch"], saved["best_loss"], saved["bad_epochs"]
        history, best_state = saved["history"], saved["best"]
    task = bar.task(phase, pc.max_epochs)
    for epoch in range(start, pc.max_epochs):
        torch.manual_seed(_phase_seed(seed, phase, epoch))
        net.train()
        total = torch.zeros((), device=device)
        n = 0
        for xb, yb in batches(epoch):
            xt = torch.from_numpy(xb).to(device, non_blocking=True)
            yt = torch.from_numpy(yb).to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.mse_loss(net(xt), yt)
            loss.backward()
            opt.step()
            total += loss.detach() * len(xb)
            n += len(xb)
        if n == 0:
            raise ValueError(f"phase {phase!r} got no training samples in epoch {epoch}; "
                             "check that the cubes overlap and hold valid pixels.")
        train_loss = float(total) / n
        val_loss = _evaluate(net, val, device) if val is not None else train_loss
        if val_loss < best:
            best, bad = val_loss, 0
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            bad += 1
        record = {"phase": phase, "epoch": epoch + 1, "train_loss": train_loss,
                  "val_loss": val_loss if val is not None else None, "samples": n}
        history.append(record)
        done = bad >= pc.patience or epoch + 1 >= pc.max_epochs
        if done:
            net.load_state_dict(best_state)
        ckpt.save(phase, net, opt, best_state,
                  {"phase": phase, "epoch": epoch + 1, "best_loss": best, "bad_epochs": bad,
                   "history": history, "done": done})
        bar.update(task, completed=epoch + 1,
                   text=f"train {train_loss:.4f}" + (f" val {val_loss:.4f}" if val else ""))
        if on_epoch_end is not None:
            on_epoch_end(dict(record))
        if done:
            break
    net.load_state_dict(best_state)
    return history


# --------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------
def _signature(ds: xr.Dataset | None) -> dict[str, Any] | None:
    if ds is None:
        return None
    sig: dict[str, Any] = {"sizes": {str(k): int(v) for k, v in ds.sizes.items()},
                           "variables": sorted(map(str, ds.data_vars))}
    if "time" in ds.coords and ds.sizes.get("time"):
        t = ds["time"].values
        sig["time"] = [str(t[0])[:10], str(t[-1])[:10]]
    for key in ("source", "world_config", "product"):
        val = ds.encoding.get(key) if key == "source" else ds.attrs.get(key)
        if val is not None:
            sig[key] = str(val)
    return sig


def _resolve_fold(split: Fold | str | None, sites: xr.Dataset | None) -> Fold | None:
    if split is None or isinstance(split, Fold):
        return split
    if isinstance(split, str):
        if sites is None:
            raise ValueError(f"split={split!r} needs sites to split.")
        splitter, k = parse_split(split)
        folds = splitter.folds(sites)
        if not 0 <= k < len(folds):
            raise ValueError(f"split {split!r} asks for fold {k}, but it has {len(folds)} folds "
                             f"(0..{len(folds) - 1}).")
        return folds[k]
    if hasattr(split, "folds"):
        raise TypeError(f"split={split!r} is a splitter; pass one fold, e.g. "
                        "splitter.folds(sites)[0], or a spec string like 'site-kfold:k=5,fold=0'.")
    raise TypeError(f"split must be None, a Fold or a spec string; got {type(split).__name__}.")


def _site_arrays(samples: xr.Dataset, spec: FeatureSpec, ids: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sel = samples.isel(sample=np.flatnonzero(np.isin(samples["site"].values, ids)))
    cols = columns_from_dataset(sel, spec.inputs)
    x = spec.transform(cols)
    y = np.asarray(sel["gpp"].values, np.float32)[:, None]
    cls_ = np.asarray(sel["igbp"].values) if "igbp" in sel else np.zeros(len(y), int)
    return x, y, cls_


def train(drivers: xr.Dataset, *, sites: xr.Dataset | None = None, sif: xr.Dataset | None = None,
          method: str = "siftml", split: Fold | str | None = None,
          config: TrainConfig | dict | None = None, out: str | None = None, seed: int = 0,
          device: str = "auto", progress: bool = True,
          on_epoch_end: Callable[[dict], Any] | None = None, client: Any = None,
          storage_options: dict | None = None, provenance: dict | None = None) -> Any:
    """Train a GPP model from cubes; return it as a bundle (saved to ``out`` when given).

    Parameters
    ----------
    drivers : xarray.Dataset
        Driver cube on ``(time, lat, lon)`` in canonical units (lazy, Zarr-backed is best),
        with static ``igbp`` and ``elevation`` as the feature config needs.
    sites : xarray.Dataset, optional
        EC site records: ``gpp`` [gC m-2 d-1] on ``(site, time)`` with ``lat``, ``lon``,
        ``igbp`` coordinates.  Needed by every method but ``"pmodel"``.
    sif : xarray.Dataset, optional
        SIF cube (``sif`` [mW m-2 nm-1 sr-1]) on the drivers' grid; time steps a subset of the
        drivers'.  Needed by ``"siftml"`` and ``"sif-only"``.
    method : {"siftml", "ec-only", "sif-only", "pmodel"}
    split : Fold or str, optional
        Sites held out: a :class:`xgpp.splits.Fold`, or a spec such as
        ``"site-kfold:k=5,fold=0"``, ``"igbp:fold=3"``, ``"blocks:block=10,buffer=2,fold=1"``.
        None trains on all sites.
    config : TrainConfig or dict, optional
        Defaults to ``TrainConfig()``.
    out : str, optional
        Model folder (local or fsspec URL): checkpoints go to ``OUT/checkpoints`` after every
        epoch and the final bundle to ``OUT``.  Re-running with the same arguments resumes.
    seed : int
        Seeds weights, data order, dropout and splits of validation sites/blocks.
    device : str
        ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    progress : bool
        Show a progress bar with losses (on stderr).
    on_epoch_end : callable, optional
        Called with a dict ``{"phase", "epoch", "train_loss", "val_loss", "samples"}`` after each
        epoch's checkpoint is written.
    client : distributed.Client, optional
        Load grid chunks as Dask futures on this client (default: local threads).
    storage_options : dict, optional
        fsspec options for ``out``.
    provenance : dict, optional
        Extra provenance to record (e.g. the catalog URL).

    Returns
    -------
    Model
        A :class:`xgpp.models.TorchModel` (or :class:`PModelBaseline`).
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}; use one of {list(METHODS)}.")
    cfg = TrainConfig.from_dict(config) if isinstance(config, dict) else (config or TrainConfig())
    if method in _NEEDS_SITES and sites is None:
        raise ValueError(f"method {method!r} trains on EC site GPP: pass sites=<dataset with "
                         "gpp on (site, time)>.")
    if method in _NEEDS_SIF and sif is None:
        raise ValueError(f"method {method!r} pre-trains on SIF: pass sif=<SIF cube, e.g. the "
                         "sif_tropomi store>.")
    fold = _resolve_fold(split, sites)
    dev = resolve_device(device)
    prov: dict[str, Any] = {
        "method": method, "seed": int(seed), "config": cfg.to_dict(),
        "split": fold.to_dict() if fold is not None else None,
        "data": {"drivers": _signature(drivers), "sites": _signature(sites),
                 "sif": _signature(sif)},
        "device": str(dev), "versions": versions(), **(provenance or {}),
    }
    if method == "pmodel":
        model = PModelBaseline(provenance=prov)
        model.check(drivers)
        if out is not None:
            model.save(out, storage_options=storage_options)
        return model

    spec = FeatureSpec.fit(cfg.features, drivers, stacklevel=3)
    fingerprint = {k: prov[k] for k in ("method", "seed", "config", "split", "data")}
    ckpt = _Checkpoints(out, fingerprint, storage_options)

    # ---- site samples, partitioned into train / validation (test sites never enter)
    assert sites is not None
    samples = site_samples(drivers, sites, inputs=spec.inputs, window=cfg.site_window,
                           igbp_from=cfg.igbp_from, stacklevel=3)
    present = np.unique(samples["site"].values.astype(str))
    train_ids = present if fold is None else np.intersect1d(present, np.asarray(fold.train))
    if len(train_ids) == 0:
        raise ValueError(f"no training site has valid samples (fold "
                         f"{fold.name if fold else 'all'}: {len(fold.train) if fold else 0} "
                         f"training sites, {len(present)} sites with samples).")
    rng = np.random.default_rng([seed, 1])
    n_val = int(round(cfg.val_sites * len(train_ids))) if len(train_ids) >= 2 else 0
    n_val = min(max(n_val, 1 if cfg.val_sites > 0 and len(train_ids) >= 2 else 0),
                len(train_ids) - 1)
    val_ids = np.sort(rng.choice(train_ids, size=n_val, replace=False)) if n_val else np.array(
        [], str)
    fit_ids = np.setdiff1d(train_ids, val_ids)
    x_fit, y_fit, cls_fit = _site_arrays(samples, spec, fit_ids)
    x_val, y_val, cls_val = _site_arrays(samples, spec, val_ids)
    gpp_mean, gpp_std = float(y_fit.mean()), float(y_fit.std()) or 1.0
    site_val = (x_val, ((y_val - gpp_mean) / gpp_std).astype(np.float32)) if len(
        y_val) else None
    y_fit_n = ((y_fit - gpp_mean) / gpp_std).astype(np.float32)
    prov["sites"] = {"fit": fit_ids.tolist(), "validation": val_ids.tolist(),
                     "test": list(fold.test) if fold else [],
                     "n_fit_samples": len(y_fit), "n_val_samples": len(y_val),
                     "exclusions": json.loads(samples.attrs.get("exclusions", "{}"))}

    def site_batches(phase: str, pc: PhaseConfig) -> Callable[[int], Iterator[tuple]]:
        return lambda epoch: _array_batches(
            x_fit, y_fit_n, pc.batch_size,
            np.random.default_rng([seed, zlib.crc32(phase.encode()), epoch]))

    torch.manual_seed(seed)
    net = MLP(spec.n_features, 1, cfg.net, embed_column=spec.embed_column).to(dev)
    history: dict[str, list] = {}
    with _Progress(progress) as bar:
        if method in _NEEDS_SIF:
            assert sif is not None
            s_mean, s_std, _ = streaming_moments(sif, [cfg.sif_var])[cfg.sif_var]
            prov["sif_normalisation"] = {"mean": s_mean, "std": s_std}
            lc = cfg.loader
            val_cells = validation_cells(drivers["lat"].values, drivers["lon"].values,
                                         block=lc.val_block, fraction=lc.val_fraction, seed=seed)
            common = dict(target_var=cfg.sif_var, target_scale=(s_mean, s_std),
                          batch_size=cfg.pretrain.batch_size, prefetch=lc.prefetch,
                          workers=lc.workers, client=client, seed=seed)
            stream = GridSamples(drivers, sif, spec, cell_mask=~val_cells,
                                 shuffle_buffer=lc.shuffle_buffer, **common)
            grid_val = None
            if val_cells.any():
                vstream = GridSamples(drivers, sif, spec, cell_mask=val_cells, shuffle_buffer=0,
                                      **common)
                xs, ys, n = [], [], 0
                for xb, yb in vstream.iterate(0, max_samples=lc.max_val_samples):
                    xs.append(xb)
                    ys.append(yb)
                    n += len(xb)
                if n:
                    grid_val = (np.concatenate(xs)[:lc.max_val_samples],
                                np.concatenate(ys)[:lc.max_val_samples])
            pc = cfg.pretrain
            history["pretrain"] = _run_phase(
                "pretrain", net, pc=pc, ckpt=ckpt, seed=seed, device=dev, bar=bar,
                on_epoch_end=on_epoch_end, val=grid_val,
                batches=lambda epoch: stream.iterate(epoch, max_samples=pc.samples_per_epoch))

        if method == "siftml":
            new_head(net, 1, seed=seed + 1)
            for phase in STRATEGIES[cfg.strategy]:
                pc = cfg.head if phase == "head" else cfg.finetune
                history[phase] = _run_phase(phase, net, pc=pc, ckpt=ckpt, seed=seed, device=dev,
                                            bar=bar, on_epoch_end=on_epoch_end, val=site_val,
                                            batches=site_batches(phase, pc))
        elif method == "ec-only":
            history["ec"] = _run_phase("ec", net, pc=cfg.ec, ckpt=ckpt, seed=seed, device=dev,
                                       bar=bar, on_epoch_end=on_epoch_end, val=site_val,
                                       batches=site_batches("ec", cfg.ec))
    prov["history"] = history
    net = net.cpu().eval()
    for p in net.parameters():
        p.requires_grad_(True)
    gpp_out = {"gpp": dict(OUTPUTS["gpp"])}
    if method == "sif-only":
        module = SIFLinear(net, spec)
        module.sif_mean.fill_(s_mean)
        module.sif_std.fill_(s_std)
        with torch.inference_mode():
            sif_fit = module.sif(torch.from_numpy(np.concatenate([x_fit, x_val]))).numpy()
        slopes, info = fit_sif_slopes(
            sif_fit, np.concatenate([y_fit, y_val])[:, 0],
            np.concatenate([cls_fit, cls_val]),
            per_class=cfg.sif_conversion == "igbp", min_samples=cfg.min_class_samples)
        module.slopes.copy_(torch.from_numpy(slopes.astype(np.float32)))
        model = TorchModel(module.eval(), spec, outputs=gpp_out, output_scale=[1.0],
                           output_offset=[0.0], kind="sif-linear", net=cfg.net, method=method,
                           provenance={**prov, "sif_conversion": info},
                           extra={"n_out_base": 1, "conversion": info})
    else:
        model = TorchModel(net, spec, outputs=gpp_out, output_scale=[gpp_std],
                           output_offset=[gpp_mean], kind="mlp", net=cfg.net, method=method,
                           provenance=prov)
    if out is not None:
        model.save(out, storage_options=storage_options)
    return model


def train_from_catalog(catalog: str | os.PathLike | None, *, method: str = "siftml",
                       split: str | Fold | None = None, out: str | None = None,
                       config: TrainConfig | dict | str | None = None, seed: int = 0,
                       device: str = "auto", progress: bool = True,
                       sif_product: str = "sif_tropomi",
                       storage_options: dict | None = None) -> Any:
    """Open the cubes of an intake catalog and :func:`train` on them (``xgpp train``).

    Parameters
    ----------
    catalog : str or path-like
        Anything :func:`xgpp.catalog.open_catalog` accepts (``catalog.yaml``, world folder,
        packaged name, None for the default).
    method, split, out, seed, device, progress
        As for :func:`train`.
    config : TrainConfig, dict or str, optional
        A config, its dict, or a path to a JSON file holding that dict.
    sif_product : str
        Catalog entry of the SIF cube (``"sif_tropomi"`` or ``"sif_oco2"``).
    storage_options : dict, optional
        fsspec options for the catalog, its stores and ``out``.
    """
    from xgpp.catalog import open_catalog, open_cube

    if isinstance(config, str | os.PathLike):
        with open(config) as f:
            config = json.load(f)
    cat = open_catalog(catalog, storage_options=storage_options)
    drivers = open_cube("drivers", catalog=cat)
    sites = open_cube("sites", catalog=cat) if method in _NEEDS_SITES else None
    sif = open_cube(sif_product, catalog=cat) if method in _NEEDS_SIF else None
    return train(drivers, sites=sites, sif=sif, method=method, split=split, config=config,
                 out=out, seed=seed, device=device, progress=progress,
                 storage_options=storage_options,
                 provenance={"catalog": str(catalog), "sif_product": sif_product})


# xgpp.train(...) works although xgpp.train is also this module
from xgpp._callable import make_module_callable  # noqa: E402

make_module_callable(__name__, "train")
