"""SIF pre-training on every valid grid pixel (shared by SIFTML and the SIF-only baseline)."""

from __future__ import annotations

import numpy as np
import torch

from xgpp.models.features import streaming_moments
from xgpp.samples import GridSamples, validation_cells
from xgpp.train.losses import mse

__all__ = ["pretrain_on_sif"]


def pretrain_on_sif(ctx, net: torch.nn.Module) -> tuple[float, float]:
    """Train ``net`` to predict normalised SIF from the drivers; return SIF ``(mean, std)``.

    SIF is normalised by the product's own moments, so rescaling the product leaves the
    pre-trained network unchanged.  Validation pixels are whole spatial blocks
    (``config.loader.val_block``), held out from the stream.
    """
    cfg, sif, drivers, spec, seed = ctx.config, ctx.sif, ctx.drivers, ctx.spec, ctx.seed
    assert sif is not None
    s_mean, s_std, _ = streaming_moments(sif, [cfg.sif_var])[cfg.sif_var]
    ctx.provenance["sif_normalisation"] = {"mean": s_mean, "std": s_std}
    lc = cfg.loader
    val_cells = validation_cells(drivers["lat"].values, drivers["lon"].values,
                                 block=lc.val_block, fraction=lc.val_fraction, seed=seed)
    common = dict(target_var=cfg.sif_var, target_scale=(s_mean, s_std),
                  batch_size=cfg.pretrain.batch_size, prefetch=lc.prefetch, workers=lc.workers,
                  client=ctx.client, seed=seed)
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
            grid_val = {"x": np.concatenate(xs)[:lc.max_val_samples],
                        "y": np.concatenate(ys)[:lc.max_val_samples]}
    pc = cfg.pretrain

    def batches(epoch: int):
        for xb, yb in stream.iterate(epoch, max_samples=pc.samples_per_epoch):
            yield {"x": xb, "y": yb}

    ctx.history["pretrain"] = ctx.run_phase("pretrain", net, pc, batches=batches, val=grid_val,
                                            loss=mse("sif"))
    return s_mean, s_std
