"""Shared by the multi-task MoE and its single-task baselines on sparse SIF tracks.

:func:`prepare` builds, before any training: the sounding index of the SIF cube (errors when
the window holds none, or the cube sits on another grid or time axis), held-out track
segments (the ``tracks:`` part of the split), validation segments inside the training
tracks, the SIF normalisation, and the physics relation fitted where training towers and
training tracks coincide.  :func:`multitask_loss` is the masked SIF + masked GPP + physics
loss, :func:`gate_forward` the forward that also returns the gate weights.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from xgpp._strings import as_str
from xgpp.errors import InputError
from xgpp.models.moe import GateStats
from xgpp.sif_gpp import fit_relation, slope_bounds
from xgpp.splits import split_parts
from xgpp.tracks import (
    MixedSamples,
    TrackIndex,
    parse_track_split,
    segment_ids,
    validation_segments,
)
from xgpp.train.context import sample_classes
from xgpp.train.losses import masked_mse, physics_residual

__all__ = ["Relation", "TrackData", "gate_forward", "multitask_loss", "prepare"]


class Relation(nn.Module):
    """``GPP = a_k * SIF + b_k`` per IGBP class: fixed (fitted) or learnable within bounds."""

    lo: torch.Tensor  # buffers and parameters (registered in __init__)
    hi: torch.Tensor
    theta: torch.Tensor
    a_fixed: torch.Tensor
    b: torch.Tensor

    def __init__(self, slope: np.ndarray, intercept: np.ndarray, *, learnable: bool) -> None:
        super().__init__()
        lo, hi = slope_bounds()
        self.learnable = learnable
        self.register_buffer("lo", torch.tensor(lo, dtype=torch.float32))
        self.register_buffer("hi", torch.tensor(hi, dtype=torch.float32))
        if learnable:
            u = np.clip((slope - lo) / (hi - lo), 0.01, 0.99)
            self.theta = nn.Parameter(torch.tensor(np.log(u / (1 - u)), dtype=torch.float32))
            self.b = nn.Parameter(torch.tensor(intercept, dtype=torch.float32))
        else:
            self.register_buffer("a_fixed", torch.tensor(slope, dtype=torch.float32))
            self.register_buffer("b", torch.tensor(intercept, dtype=torch.float32))

    def slope(self) -> torch.Tensor:
        """``(17,)`` slopes (inside the bounds when learnable)."""
        if self.learnable:
            return self.lo + (self.hi - self.lo) * torch.sigmoid(self.theta)
        return self.a_fixed

    def record(self) -> dict[str, Any]:
        """JSON record of the current slopes and intercepts by IGBP code."""
        from xgpp.landcover import IGBP_CODES

        a = self.slope().detach().cpu().numpy()
        b = self.b.detach().cpu().numpy()
        return {"learnable": self.learnable,
                "slope": {c: float(a[k]) for k, c in enumerate(IGBP_CODES)},
                "intercept": {c: float(b[k]) for k, c in enumerate(IGBP_CODES)}}


class WithRelation(nn.Module):
    """The network and the relation trained together (one state dict for checkpoints)."""

    def __init__(self, net: nn.Module, relation: Relation) -> None:
        super().__init__()
        self.net = net
        self.relation = relation

    def forward_with_gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's outputs and gate weights."""
        return self.net.forward_with_gates(x)  # type: ignore[operator]  # (an nn.Module's)


@dataclass
class TrackData:
    """Everything the track-trained methods share, built once before training."""

    index: TrackIndex
    test: np.ndarray        # bool per sounding: held-out track segments
    val: np.ndarray         # bool per sounding: validation segments (inside training)
    fit: np.ndarray         # bool per sounding: soundings that train
    sif_mean: float
    sif_std: float
    relation: tuple[np.ndarray, np.ndarray, dict]
    track_fold: Any


def _tower_pairs(ctx, index: TrackIndex, test: np.ndarray) -> tuple[np.ndarray, ...]:
    """SIF soundings at training towers' cells and dates, with the towers' GPP and class.

    Only soundings of training tracks are used (held-out segments never inform the slopes);
    the SIF is read only at the towers' cells (bounded memory).
    """
    cfg = ctx.config
    s = ctx.site_split
    samples = s.samples
    keep = np.isin(as_str(samples["site"].values), np.concatenate([s.fit_ids, s.val_ids]))
    samples = samples.isel(sample=np.flatnonzero(keep))
    lat, lon = ctx.drivers["lat"].values, ctx.drivers["lon"].values
    # nearest grid index of each distinct tower cell (a few hundred), then per sample
    ulat, ilat = np.unique(samples["cell_lat"].values, return_inverse=True)
    ulon, ilon = np.unique(samples["cell_lon"].values, return_inverse=True)
    yi = np.abs(lat[None, :] - ulat[:, None]).argmin(1)[np.asarray(ilat).ravel()]
    xi = np.abs(lon[None, :] - ulon[:, None]).argmin(1)[np.asarray(ilon).ravel()]
    ti = pd.DatetimeIndex(ctx.drivers["time"].values).get_indexer(
        pd.DatetimeIndex(samples["time"].values))
    cells, inv = np.unique(np.stack([yi, xi], 1), axis=0, return_inverse=True)
    inv = np.asarray(inv).ravel()
    sif = ctx.sif[cfg.sif_var].reindex(time=ctx.drivers["time"]).isel(
        lat=("cell", cells[:, 0]), lon=("cell", cells[:, 1])).values  # (time, cell)
    vals = sif[np.clip(ti, 0, None), inv]
    vals = np.where(ti >= 0, vals, np.nan)
    shape = index.shape
    held = np.ravel_multi_index((index.t[test], index.y[test], index.x[test]), shape)
    here = np.ravel_multi_index((np.clip(ti, 0, None), yi, xi), shape)
    vals = np.where(np.isin(here, held), np.nan, vals)
    return vals, samples["gpp"].values.astype(float), sample_classes(samples)


def _sounding_moments(ctx, index: TrackIndex, use: np.ndarray, var: str) -> tuple[float, float]:
    """Mean and std of SIF over the training soundings only (held-out tracks never seen).

    Streams the SIF cube chunk by chunk over the driver chunks holding those soundings.
    """
    sif = ctx.sif[var].reindex(time=ctx.drivers["time"])
    order = np.flatnonzero(use)
    order = order[np.argsort(index.chunk_id[order], kind="stable")]
    keys, starts = np.unique(index.chunk_id[order], return_index=True)
    bounds = list(starts) + [len(order)]
    total = total2 = 0.0
    n = 0
    for i, key in enumerate(keys):
        tsl, ysl, xsl = index.chunk_slices(int(key))
        block = np.asarray(sif.isel(time=tsl, lat=ysl, lon=xsl).values, np.float64)
        m = order[bounds[i]:bounds[i + 1]]
        v = block[index.t[m] - tsl.start, index.y[m] - ysl.start, index.x[m] - xsl.start]
        v = v[np.isfinite(v)]
        total, total2, n = total + v.sum(), total2 + (v * v).sum(), n + len(v)
    if n < 2:
        raise InputError(f"only {n} finite training soundings of {var!r}; cannot normalise SIF.")
    mean = total / n
    std = float(np.sqrt(max(total2 / n - mean * mean, 0.0))) or 1.0
    return float(mean), std


def prepare(ctx, *, relation: bool = True) -> TrackData:
    """Index the soundings, split tracks, normalise SIF and fit the relation (see module)."""
    cfg, mt, seed = ctx.config, ctx.config.multitask, ctx.seed
    assert ctx.sif is not None
    index = TrackIndex.build(ctx.sif, ctx.drivers, var=cfg.sif_var)
    lat, lon = ctx.drivers["lat"].values, ctx.drivers["lon"].values
    ids = segment_ids(index, lat, lon, segment=mt.segment)
    spec = split_parts(ctx.split)[1]
    fold = None
    if spec is not None:
        splitter, k = parse_track_split(spec)
        fold = splitter.fold(index, lat, lon, k)
        test = fold.test
        ctx.provenance["split_tracks"] = fold.to_dict()
    else:
        test = np.zeros(index.n_soundings, bool)
    val = validation_segments(ids, mt.track_val, seed) & ~test if mt.track_val else np.zeros_like(
        test)
    fit = ~test & ~val
    if not fit.any():
        raise InputError(f"no training soundings left: {int(test.sum())} held out, "
                         f"{int(val.sum())} for validation of {index.n_soundings}.")
    s_mean, s_std = _sounding_moments(ctx, index, fit, cfg.sif_var)
    ctx.provenance["sif_normalisation"] = {"mean": s_mean, "std": s_std}
    ctx.provenance["tracks"] = {**index.summary(), "n_test": int(test.sum()),
                                "n_validation": int(val.sum()), "n_fit": int(fit.sum())}
    rel: tuple[np.ndarray, np.ndarray, dict[str, Any]] = (np.zeros(17), np.zeros(17), {})
    if relation and mt.physics_weight > 0:
        sif_p, gpp_p, cls_p = _tower_pairs(ctx, index, test)
        try:
            rel = fit_relation(sif_p, gpp_p, cls_p, min_pairs=mt.min_pairs)
        except ValueError as err:
            if mt.slopes != "learnable" or "tower-date pairs" not in str(err):
                raise
            # learnable slopes need no fit: start from the middle of the bounds
            lo, hi = slope_bounds()
            rel = ((lo + hi) / 2, np.zeros(len(lo)), {"start": "bounds midpoints",
                                                      "reason": str(err)})
        ctx.provenance["relation_fit"] = rel[2]
    return TrackData(index, test, val, fit, s_mean, s_std, rel, fold)


def loader(ctx, data: TrackData, proportions: tuple[float, float, float], *,
           sites: bool) -> MixedSamples:
    """The mixed loader over the fitting soundings (and fitting sites when ``sites``)."""
    cfg, mt = ctx.config, ctx.config.multitask
    site_rows = None
    if sites:
        s = ctx.site_split
        site_rows = (s.x_fit, s.normalise(s.y_fit)[:, 0], s.cls_fit.astype(int))
    p = np.asarray(proportions, float)
    batch = max(1, int(round(mt.phase.batch_size * p.sum() / sum(mt.proportions))))
    return MixedSamples(ctx.drivers, ctx.sif, ctx.spec, data.index, use=data.fit,
                        sites=site_rows, var=cfg.sif_var, sif_scale=(data.sif_mean, data.sif_std),
                        weight=mt.sif_weighting, proportions=tuple(p), batch_size=batch,
                        shuffle_buffer=mt.shuffle_buffer, prefetch=cfg.loader.prefetch,
                        workers=cfg.loader.workers, client=ctx.client, seed=ctx.seed,
                        cache_mib=mt.cache_mib)


def epoch_batches(stream: MixedSamples, ctx, rows: int | None):
    """``batches(epoch)`` of the loop: one pass, or about ``rows`` rows, per epoch."""
    def batches(epoch: int):
        max_batches = None if rows is None else max(1, -(-rows // stream.batch_size))
        yield from stream.iterate(epoch, max_batches=max_batches)
    return batches


def validation_rows(ctx, data: TrackData, stream: MixedSamples | None, *, tracks: bool,
                    sites: bool) -> dict[str, np.ndarray] | None:
    """Validation rows in batch format: validation soundings and validation sites."""
    n_f = ctx.spec.n_features
    parts = []
    if tracks and data.val.any() and stream is not None:
        a = stream.track_arrays(data.val, max_samples=ctx.config.multitask.max_val_soundings)
        n = len(a["sif"])
        parts.append({"x": a["x"], "sif": ((a["sif"] - data.sif_mean) / data.sif_std
                                           ).astype(np.float32),
                      "sif_mask": np.ones(n, bool), "sif_weight": np.ones(n, np.float32),
                      "gpp": np.zeros(n, np.float32), "gpp_mask": np.zeros(n, bool),
                      "igbp": a["igbp"].astype(np.int64)})
    if sites:
        s = ctx.site_split
        n = len(s.y_val)
        if n:
            parts.append({"x": s.x_val, "sif": np.zeros(n, np.float32),
                          "sif_mask": np.zeros(n, bool), "sif_weight": np.zeros(n, np.float32),
                          "gpp": s.normalise(s.y_val)[:, 0], "gpp_mask": np.ones(n, bool),
                          "igbp": s.cls_val.astype(np.int64)})
    if not parts:
        return None
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    assert out["x"].shape[1] == n_f
    return out


def site_only_batches(ctx, pc_rows: int | None, batch_size: int):
    """Shuffled site batches in the mixed-batch format (the single-task GPP network)."""
    s = ctx.site_split
    y = s.normalise(s.y_fit)[:, 0]
    n = len(y)

    def batches(epoch: int):
        rng = np.random.default_rng([ctx.seed, zlib.crc32(b"single-gpp"), epoch])
        rows = n if pc_rows is None else pc_rows
        order = np.concatenate([rng.permutation(n) for _ in range(-(-rows // n))])[:rows]
        for i in range(0, rows, batch_size):
            idx = order[i:i + batch_size]
            k = len(idx)
            yield {"x": s.x_fit[idx], "sif": np.zeros(k, np.float32),
                   "sif_mask": np.zeros(k, bool), "sif_weight": np.zeros(k, np.float32),
                   "gpp": y[idx], "gpp_mask": np.ones(k, bool),
                   "igbp": s.cls_fit[idx].astype(np.int64)}
    return batches


def gate_forward(net: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Outputs ``(n, tasks)`` and gate weights ``(n, tasks, experts)``."""
    out, gates = net.forward_with_gates(batch["x"])  # type: ignore[operator]  # (nn.Module)
    return {"out": out, "gates": gates.transpose(0, 1)}


class GateMonitor:
    """Per-epoch expert utilisation (mean gate weight per expert and task, entropies)."""

    def __init__(self, tasks: tuple[str, ...]) -> None:
        self.stats = GateStats(tasks)

    def reset(self) -> None:
        """Start a new epoch."""
        self.stats.reset()

    def update(self, pred: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> None:
        """Add one batch's gates."""
        self.stats.update(pred["gates"].detach().transpose(0, 1))

    def result(self) -> dict[str, Any]:
        """The epoch's utilisation record."""
        return self.stats.result()


def multitask_loss(tasks: tuple[str, ...], *, weights: dict[str, float],
                   sif_scale: tuple[float, float], gpp_scale: tuple[float, float],
                   relation: Relation | None, physics_weight: float):
    """``loss(pred, batch)``: weighted masked SIF and GPP losses plus the physics term.

    Parts: ``"sif"`` (count-weighted MSE of normalised SIF on track rows), ``"gpp"`` (MSE of
    normalised GPP on site rows) and ``"physics"`` (mean squared departure of predicted GPP
    from ``a_k * predicted SIF + b_k`` on every row, labelled or not, in units of the sites'
    GPP std).  Only the tasks the network has contribute.
    """
    col = {t: i for i, t in enumerate(tasks)}

    def loss(pred: dict[str, torch.Tensor], b: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = pred["out"]
        parts: dict[str, torch.Tensor] = {}
        total = out.sum() * 0.0
        if "sif" in col:
            parts["sif"] = masked_mse(out[:, col["sif"]], b["sif"], b["sif_mask"],
                                      b["sif_weight"])
            total = total + weights["sif"] * parts["sif"]
        if "gpp" in col:
            parts["gpp"] = masked_mse(out[:, col["gpp"]], b["gpp"], b["gpp_mask"])
            total = total + weights["gpp"] * parts["gpp"]
        if relation is not None and physics_weight > 0 and "sif" in col and "gpp" in col:
            sif = out[:, col["sif"]] * sif_scale[1] + sif_scale[0]
            gpp = out[:, col["gpp"]] * gpp_scale[1] + gpp_scale[0]
            parts["physics"] = physics_residual(gpp, sif, b["igbp"], relation.slope(),
                                                relation.b, gpp_scale[1])
            total = total + physics_weight * parts["physics"]
        return total, parts

    return loss
