"""Pre-training on every valid grid pixel, with the optional cache.

Shared by SIFTML, its variants and the SIF-only baselines; the cache is
:mod:`xgpp.train.methods._cache`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import xarray as xr

from xgpp.models.features import streaming_moments
from xgpp.models.siftml import set_trainable
from xgpp.samples import GridSamples, validation_cells
from xgpp.train.losses import mse
from xgpp.train.methods._mlp import new_mlp

__all__ = ["PretrainTarget", "pretrain_fingerprint", "pretrain_on_sif", "pretrained_mlp"]

#: loader settings that change how fast batches arrive, not which (left out of the cache key)
_SPEED_ONLY = ("workers", "prefetch")


@dataclass(frozen=True)
class PretrainTarget:
    """What the network learns on grid pixels.

    Attributes
    ----------
    cube : xarray.Dataset
        Target cube on the drivers' grid (time steps a subset of theirs), lazy is fine.
    var : str
        Its variable to learn (normalised by its own streamed mean and std).
    name : str
        Loss part name and provenance key prefix (``"sif"`` -> ``"sif_normalisation"``).
    key : dict
        JSON-ready description of the target beyond the SIF cube's signature (e.g. the
        slopes that convert SIF to GPP); part of the cache fingerprint.
    """

    cube: xr.Dataset
    var: str
    name: str = "sif"
    key: dict[str, Any] = field(default_factory=dict)


def pretrain_fingerprint(ctx, target: PretrainTarget, moments: tuple[float, float]
                         ) -> dict[str, Any]:
    """Everything pre-training depends on: the cache key hashes this.

    The data signatures (sizes, time span, source, world config), the fitted feature
    normalisation and the target's streamed moments (so an edited cube with the same shape
    gets another key), the ``features``/``net``/``pretrain``/``loader`` config and
    ``sif_var``, the target description, the seed, the device type and the versions of xgpp
    and torch.  No site, split or fine-tuning setting enters.
    """
    from xgpp._version import __version__
    from xgpp.train.methods._cache import CACHE_FORMAT

    cfg = ctx.config.to_dict()
    loader = {k: v for k, v in cfg["loader"].items() if k not in _SPEED_ONLY}
    device: dict[str, Any] = {"type": ctx.device.type}
    if ctx.device.type == "cuda":
        device["name"] = torch.cuda.get_device_name(ctx.device)
    return {
        "format": CACHE_FORMAT, "xgpp": __version__, "torch": torch.__version__,
        "drivers": ctx.provenance["data"]["drivers"], "sif": ctx.provenance["data"]["sif"],
        "features": ctx.spec.to_dict(),
        "config": {"features": cfg["features"], "net": cfg["net"], "pretrain": cfg["pretrain"],
                   "loader": loader, "sif_var": cfg["sif_var"]},
        "target": {"var": target.var, "name": target.name, "moments": list(moments),
                   **target.key},
        "seed": int(ctx.seed), "device": device,
    }


def pretrain_on_sif(ctx, net: torch.nn.Module, *, target: PretrainTarget | None = None
                    ) -> tuple[float, float]:
    """Train ``net`` to predict the normalised target from the drivers; return its moments.

    Returns the target's ``(mean, std)`` (SIF units by default) that normalise it.
    The default target is the SIF cube's ``config.sif_var``, normalised by the product's own
    moments, so rescaling the product leaves the pre-trained network unchanged.  Validation
    pixels are whole spatial blocks (``config.loader.val_block``), held out from the stream.

    With ``ctx.cache_dir`` the pre-trained weights and history are looked up by
    :func:`pretrain_fingerprint` first: a hit loads them (no pre-training), a miss stores them
    after training; ``provenance["pretrain_cache"]`` records ``{"hit", "key"}``.
    """
    cfg, drivers, spec, seed = ctx.config, ctx.drivers, ctx.spec, ctx.seed
    if target is None:
        assert ctx.sif is not None
        target = PretrainTarget(ctx.sif, cfg.sif_var)
    t_mean, t_std, _ = streaming_moments(target.cube, [target.var])[target.var]
    ctx.provenance[f"{target.name}_normalisation"] = {"mean": t_mean, "std": t_std}
    with contextlib.ExitStack() as stack:
        cache = ctx.pretrain_cache
        if cache is not None:
            from xgpp.train.methods._cache import cache_key

            fingerprint = pretrain_fingerprint(ctx, target, (t_mean, t_std))
            key = cache_key(fingerprint)
            # one process computes a key at a time; the others wait, then find the entry
            stack.enter_context(cache.lock(key))
            found = cache.load(key, fingerprint)
            if found is not None:
                state, record = found
                net.load_state_dict(state)
                ctx.history["pretrain"] = record["history"]
                ctx.provenance["pretrain_cache"] = {"hit": True, "key": key}
                return t_mean, t_std
        lc = cfg.loader
        val_cells = validation_cells(drivers["lat"].values, drivers["lon"].values,
                                     block=lc.val_block, fraction=lc.val_fraction, seed=seed)
        common = dict(target_var=target.var, target_scale=(t_mean, t_std),
                      batch_size=cfg.pretrain.batch_size, prefetch=lc.prefetch, workers=lc.workers,
                      client=ctx.client, seed=seed)
        stream = GridSamples(drivers, target.cube, spec, cell_mask=~val_cells,
                             shuffle_buffer=lc.shuffle_buffer, **common)
        grid_val = None
        if val_cells.any():
            vstream = GridSamples(drivers, target.cube, spec, cell_mask=val_cells,
                                  shuffle_buffer=0, **common)
            xs, ys, n = [], [], 0
            for xb, yb in vstream.iterate(0, max_samples=lc.max_val_samples):
                xs.append(xb)
                ys.append(yb)
                n += len(xb)
            if n:
                grid_val = {"x": np.concatenate(xs)[:lc.max_val_samples],
                            "y": np.concatenate(ys)[:lc.max_val_samples]}
        pc = cfg.pretrain

        def batches(epoch: int):
            for xb, yb in stream.iterate(epoch, max_samples=pc.samples_per_epoch):
                yield {"x": xb, "y": yb}

        ctx.history["pretrain"] = ctx.run_phase("pretrain", net, pc, batches=batches, val=grid_val,
                                                loss=mse(target.name))
        if cache is not None:
            cache.store(key, net.state_dict(), fingerprint,
                        {"history": ctx.history["pretrain"], "moments": [t_mean, t_std]})
            ctx.provenance["pretrain_cache"] = {"hit": False, "key": key}
        return t_mean, t_std


def pretrained_mlp(ctx, target: PretrainTarget | None = None
                   ) -> tuple[torch.nn.Module, tuple[float, float]]:
    """The configured MLP pre-trained on ``target``, and the target's ``(mean, std)``.

    Seeded by the run's seed; the target defaults to SIF; cached with ``ctx.cache_dir``.
    """
    net = new_mlp(ctx)
    set_trainable(net, "pretrain")
    moments = pretrain_on_sif(ctx, net, target=target)
    return net, moments
