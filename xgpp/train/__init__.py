"""Training: SIFTML, the multi-task MoE and their baselines, from cubes.

:func:`train` is the plain function behind ``ds.gpp.train(...)`` and ``xgpp train``: it picks
the method from the registry (:data:`METHODS`, one file per method under
:mod:`xgpp.train.methods`), resolves the fold, and runs the method's ``fit``.  Training is
seeded and reproducible, stops early on validation data inside the training folds, writes a
checkpoint after every epoch to ``out`` and resumes from it after an interruption, and shows a
progress bar with every loss term.

Layout: :mod:`~xgpp.train.config` (configs), :mod:`~xgpp.train.checkpoints`,
:mod:`~xgpp.train.loop` (the phase loop), :mod:`~xgpp.train.losses`,
:mod:`~xgpp.train.context` (what a method is handed), :mod:`~xgpp.train.methods`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any, cast

import xarray as xr

from xgpp.errors import InputError
from xgpp.models._format import versions
from xgpp.splits import Fold, parse_split, split_parts
from xgpp.train.config import LoaderConfig, PhaseConfig, TrainConfig, TransferConfig
from xgpp.train.context import TrainContext
from xgpp.train.loop import Progress, resolve_device
from xgpp.train.methods import METHODS, Method, get_method, register_method
from xgpp.train.methods._cache import resolve_cache_dir

__all__ = [
    "METHODS",
    "LoaderConfig",
    "Method",
    "PhaseConfig",
    "TrainConfig",
    "TransferConfig",
    "get_method",
    "register_method",
    "resolve_device",
    "train",
    "train_from_catalog",
]


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


def _track_part(split: Fold | str | None) -> str | None:
    return split_parts(split)[1] if isinstance(split, str) else None


def _site_part(split: Fold | str | None) -> Fold | str | None:
    return split_parts(split)[0] if isinstance(split, str) else split


def _resolve_fold(split: Fold | str | None, sites: xr.Dataset | None) -> Fold | None:
    split = _site_part(split)
    if split is None or isinstance(split, Fold):
        return split
    if isinstance(split, str):
        if sites is None:
            raise InputError(f"split={split!r} needs sites to split.")
        splitter, k = parse_split(split)
        folds = splitter.folds(sites)
        if not 0 <= k < len(folds):
            raise InputError(f"split {split!r} asks for fold {k}, but it has {len(folds)} folds "
                             f"(0..{len(folds) - 1}).")
        return folds[k]
    if hasattr(split, "folds"):
        raise TypeError(f"split={split!r} is a splitter; pass one fold, e.g. "
                        "splitter.folds(sites)[0], or a spec string like 'site-kfold:k=5,fold=0'.")
    raise TypeError(f"split must be None, a Fold or a spec string; got {type(split).__name__}.")


def train(drivers: xr.Dataset, *, sites: xr.Dataset | None = None, sif: xr.Dataset | None = None,
          method: str = "siftml", split: Fold | str | None = None,
          config: TrainConfig | dict | None = None, out: str | None = None, seed: int = 0,
          device: str = "auto", progress: bool = True,
          on_epoch_end: Callable[[dict], Any] | None = None, client: Any = None,
          storage_options: dict | None = None, provenance: dict | None = None,
          cache_dir: str | os.PathLike | None = None) -> Any:
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
    method : str
        A name in :data:`METHODS` (``"siftml"``, ``"ec-only"``, ``"sif-only"``, ``"pmodel"``,
        ``"moe"``, ...); ``xgpp.train.METHODS[name].description`` says what each does.
    split : Fold or str, optional
        Sites held out: a :class:`xgpp.splits.Fold`, or a spec such as
        ``"site-kfold:k=5,fold=0"``, ``"igbp:fold=3"``, ``"blocks:block=10,buffer=2,fold=1"``.
        None trains on all sites.  Methods that use no sites accept and ignore it (recorded
        as ignored).  Methods trained on sparse SIF tracks take a second part after ``;``,
        ``"site-kfold:k=5,fold=0;tracks:k=5,fold=0"``, holding out whole track segments.
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
        fsspec options for ``out`` (and ``cache_dir``).
    provenance : dict, optional
        Extra provenance to record (e.g. the catalog URL).
    cache_dir : str or path-like, optional
        Folder (or fsspec URL) caching SIF pre-training across runs that share data, the
        ``features``/``net``/``pretrain``/``loader`` config, ``sif_var`` and seed (any split,
        any SIFTML variant); default ``$XGPP_CACHE_DIR``, unset: no cache.  The result is the
        same with or without it; ``provenance["pretrain_cache"]`` records hit and key.

    Returns
    -------
    Model
        A :class:`xgpp.models.TorchModel` (or :class:`PModelBaseline`).
    """
    record = get_method(method)
    cfg = TrainConfig.from_dict(config) if isinstance(config, dict) else (config or TrainConfig())
    if record.needs_sites and sites is None:
        raise InputError(f"method {method!r} trains on EC site GPP: pass sites=<dataset with "
                         "gpp on (site, time)>.")
    if record.needs_sif and sif is None:
        raise InputError(f"method {method!r} trains on SIF: pass sif=<SIF cube, e.g. the "
                         f"{record.sif_product} store>.")
    ignored = None
    tracks_part = _track_part(split)
    if tracks_part is not None and not record.track_split:
        if record.needs_sif:
            raise InputError(
                f"split={split!r} holds out SIF track segments ({tracks_part!r}), but method "
                f"{method!r} does not hold tracks out: it would train on them. Drop the "
                "'tracks:' part, or use a method that takes it (moe, single-task-sif).")
        ignored = tracks_part
    if record.needs_sites:
        fold = _resolve_fold(split, sites)
    else:
        fold, ignored = None, (split if isinstance(split, str | None) else repr(split))
    dev = resolve_device(device)
    prov: dict[str, Any] = {
        "method": method, "seed": int(seed), "config": cfg.to_dict(),
        "split": fold.to_dict() if fold is not None else None,
        "data": {"drivers": _signature(drivers), "sites": _signature(sites),
                 "sif": _signature(sif)},
        "device": str(dev), "versions": versions(), **(provenance or {}),
    }
    if ignored is not None:
        prov["split_ignored"] = ignored
    ctx = TrainContext(method=method, drivers=drivers, sites=sites if record.needs_sites else None,
                       sif=sif if record.needs_sif else None, config=cfg, fold=fold,
                       split=split if isinstance(split, str) else None, seed=int(seed),
                       device=dev, out=out, storage_options=storage_options, client=client,
                       provenance=prov, on_epoch_end=on_epoch_end,
                       cache_dir=resolve_cache_dir(cache_dir))
    with Progress(progress) as bar:
        ctx.bar = bar
        return record.fit(ctx)


def train_from_catalog(catalog: str | os.PathLike | None, *, method: str = "siftml",
                       split: str | Fold | None = None, out: str | None = None,
                       config: TrainConfig | dict | str | None = None, seed: int = 0,
                       device: str = "auto", progress: bool = True,
                       sif_product: str | None = None,
                       storage_options: dict | None = None,
                       cache_dir: str | os.PathLike | None = None) -> Any:
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
    sif_product : str, optional
        Catalog entry of the SIF cube (``"sif_tropomi"`` or ``"sif_oco2"``); default the
        method's own (:attr:`Method.sif_product`).
    storage_options : dict, optional
        fsspec options for the catalog, its stores and ``out``.
    cache_dir : str or path-like, optional
        Pre-training cache folder, as for :func:`train`.
    """
    from xgpp.catalog import open_catalog, open_cube

    record = get_method(method)
    train_config: TrainConfig | dict | None
    if isinstance(config, str | os.PathLike):
        with open(config) as f:
            train_config = json.load(f)
    else:
        train_config = config
    sif_product = sif_product or record.sif_product
    cat = open_catalog(catalog, storage_options=storage_options)
    drivers = open_cube("drivers", catalog=cat)
    sites = open_cube("sites", catalog=cat) if record.needs_sites else None
    sif = open_cube(cast(str, sif_product), catalog=cat) if record.needs_sif else None
    return train(drivers, sites=sites, sif=sif, method=method, split=split, config=train_config,
                 out=out, seed=seed, device=device, progress=progress,
                 storage_options=storage_options, cache_dir=cache_dir,
                 provenance={"catalog": str(catalog), "sif_product": sif_product})


# xgpp.train(...) works although xgpp.train is also this package
from xgpp._callable import make_module_callable  # noqa: E402

make_module_callable(__name__, "train")
