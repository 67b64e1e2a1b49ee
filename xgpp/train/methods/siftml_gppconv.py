"""SIFTML variant: pre-train on SIF converted to GPP, as SIFEC-TL did (Ma, Guan et al. 2025).

The pre-training target is pseudo-GPP on every grid pixel, ``slope[igbp] * SIF``
[gC m-2 d-1], with the SIF -> GPP slopes fitted through the origin between the observed SIF at
the training towers' cells and their EC GPP (per IGBP class by ``config.sif_conversion``, with
``min_class_samples``); held-out sites never enter.  Fine-tuning is SIFTML's
(``config.strategy``).  Because the target depends on the training sites, its cache key holds
the fitted slopes and the training sites' ids: folds never share a pre-trained network.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from xgpp._strings import as_str
from xgpp.errors import NotFoundError
from xgpp.models.baselines import fit_sif_slopes
from xgpp.models.features import N_IGBP
from xgpp.models.siftml import STRATEGIES
from xgpp.train.context import sample_classes
from xgpp.train.methods import register_method
from xgpp.train.methods._pretrain import PretrainTarget, pretrained_mlp
from xgpp.train.methods.siftml import PRETRAIN_SECTIONS, SITE_SECTIONS, finetune

__all__ = ["fit", "gppconv_slopes", "gppconv_target", "sif_at_samples"]

#: pre-training target variable (and loss part) of this variant
TARGET = "gpp_from_sif"


def sif_at_samples(sif: xr.DataArray, samples: xr.Dataset) -> np.ndarray:
    """Observed SIF at each site sample's grid cell and time step [SIF units].

    The cell is the nearest to ``cell_lat``/``cell_lon`` (the cell the drivers were read at);
    samples on a time step the SIF cube lacks get NaN.  Reads only those points.
    """
    t = pd.Index(pd.DatetimeIndex(sif["time"].values)).get_indexer(
        pd.DatetimeIndex(samples["time"].values))
    i = pd.Index(sif["lat"].values).get_indexer(samples["cell_lat"].values, method="nearest")
    j = pd.Index(sif["lon"].values).get_indexer(samples["cell_lon"].values, method="nearest")
    if not len(t):
        return np.zeros(0, np.float64)
    pts = sif.isel(time=xr.DataArray(np.maximum(t, 0), dims="sample"),
                   lat=xr.DataArray(i, dims="sample"), lon=xr.DataArray(j, dims="sample"))
    vals = np.asarray(pts.values, np.float64)
    vals[t < 0] = np.nan
    return vals


def gppconv_slopes(ctx) -> tuple[np.ndarray, dict[str, Any]]:
    """SIF -> GPP slopes ``(17,)`` fitted at the training sites (fitting and validation) only.

    Returns the slopes and a record ``{"sites", "n_samples", "conversion"}`` (the site ids
    used, the samples with finite SIF and GPP, :func:`fit_sif_slopes`'s info).
    """
    cfg, s = ctx.config, ctx.site_split
    train_ids = np.union1d(s.fit_ids, s.val_ids)
    samples = s.samples.isel(sample=np.flatnonzero(np.isin(as_str(s.samples["site"].values),
                                                           train_ids)))
    sif = sif_at_samples(ctx.sif[cfg.sif_var], samples)
    gpp = np.asarray(samples["gpp"].values, np.float64)
    slopes, info = fit_sif_slopes(sif, gpp, sample_classes(samples),
                                  per_class=cfg.sif_conversion == "igbp",
                                  min_samples=cfg.min_class_samples)
    n = int((np.isfinite(sif) & np.isfinite(gpp)).sum())
    return slopes, {"sites": [str(x) for x in train_ids], "n_samples": n, "conversion": info}


def gppconv_target(ctx, slopes: np.ndarray, record: dict[str, Any]) -> PretrainTarget:
    """The lazy pseudo-GPP cube ``slope[igbp] * SIF`` on the SIF cube's grid and time steps."""
    cfg, sif = ctx.config, ctx.sif
    assert sif is not None
    if "igbp" not in ctx.drivers:
        if cfg.sif_conversion == "igbp":
            raise NotFoundError("siftml-gppconv with sif_conversion='igbp' needs the static 'igbp' "
                           "class map in the driver cube to convert SIF on every pixel; add it, "
                           "or use sif_conversion='global'.")
        slope_map: Any = float(slopes[0])
    else:
        table = np.asarray(slopes, np.float32)

        def lookup(c: np.ndarray) -> np.ndarray:
            c = np.asarray(c, np.float64)
            k = np.clip(np.nan_to_num(c, nan=0.0), 0, N_IGBP - 1).astype(int)
            return np.where(np.isfinite(c), table[k], np.float32(np.nan)).astype(np.float32)

        igbp = ctx.drivers["igbp"].assign_coords(lat=sif["lat"].values, lon=sif["lon"].values)
        slope_map = xr.apply_ufunc(lookup, igbp, dask="parallelized",
                                   output_dtypes=[np.float32])
    pseudo = (sif[cfg.sif_var] * slope_map).astype(np.float32)
    cube = pseudo.assign_attrs(units="gC m-2 d-1",
                               long_name="GPP converted from SIF (slope[igbp] * SIF)"
                               ).to_dataset(name=TARGET)
    key = {"transform": "slope[igbp] * sif", "slopes": [float(v) for v in slopes],
           "sites": record["sites"], "sif_conversion": cfg.sif_conversion,
           "min_class_samples": cfg.min_class_samples}
    return PretrainTarget(cube, TARGET, name=TARGET, key=key)


@register_method("siftml-gppconv", needs_sites=True, sif_product="sif_tropomi",
                 comparison="transfer-variant",
                 description="SIFTML pre-trained on SIF converted to GPP (slope[igbp] * SIF, "
                             "slopes from the training sites), as SIFEC-TL",
                 config_sections=PRETRAIN_SECTIONS + ("head", "finetune", "strategy",
                                                      "transfer", "sif_conversion",
                                                      "min_class_samples") + SITE_SECTIONS)
def fit(ctx):
    """Fit slopes at the training sites, pre-train on pseudo-GPP, fine-tune as SIFTML."""
    slopes, record = gppconv_slopes(ctx)
    ctx.provenance["gppconv"] = record
    net, _ = pretrained_mlp(ctx, target=gppconv_target(ctx, slopes, record))
    return finetune(ctx, net, STRATEGIES[ctx.config.strategy])
