"""Single-task baselines of the multi-task MoE: the same network, data, features and splits.

``single-task-gpp``: the MoE architecture with only a GPP gate and tower, trained on the site
rows the MoE sees (the same number per epoch, in batches of the MoE's site share).
``single-task-sif``: only a SIF gate and tower, trained on the track rows the MoE sees; GPP
then comes from the reconstructed SIF times a per-IGBP slope fitted at the training sites (a
third GPP estimate), so its bundle predicts both ``sif`` and ``gpp``.
"""

from __future__ import annotations

import torch

from xgpp.models.base import OUTPUTS
from xgpp.models.bundle import TorchModel
from xgpp.models.outputs import NonNegative
from xgpp.train.methods import register_method
from xgpp.train.methods._multitask import (
    GateMonitor,
    epoch_batches,
    gate_forward,
    loader,
    multitask_loss,
    prepare,
    site_only_batches,
    validation_rows,
)
from xgpp.train.methods.moe import build_moe, last_utilisation, moe_model
from xgpp.train.methods.sif_only import sif_conversion

_SECTIONS = ("features", "moe", "multitask", "val_sites", "site_window", "igbp_from", "sif_var")


@register_method("single-task-gpp", needs_sites=True, sif_product=None, comparison="multitask",
                 description="the MoE network with only its GPP task, on the same site rows",
                 config_sections=_SECTIONS)
def fit_gpp(ctx):
    """Train a GPP-only MMoE on the fitting sites (the MoE's site rows per epoch)."""
    mt = ctx.config.multitask
    s = ctx.site_split
    tasks = ("gpp",)
    share = mt.proportions[1] / sum(mt.proportions)
    rows = None if mt.phase.samples_per_epoch is None else int(mt.phase.samples_per_epoch * share)
    batch = max(1, int(round(mt.phase.batch_size * share)))
    net = build_moe(ctx, tasks, [s.gpp_std], [s.gpp_mean])
    val = validation_rows(ctx, None, None, tracks=False, sites=True)  # type: ignore[arg-type]
    loss = multitask_loss(tasks, weights={"gpp": 1.0}, sif_scale=(0.0, 1.0),
                          gpp_scale=(s.gpp_mean, s.gpp_std), relation=None, physics_weight=0.0)
    ctx.history["single-gpp"] = ctx.run_phase(
        "single-gpp", net, mt.phase, batches=site_only_batches(ctx, rows, batch), val=val,
        loss=loss, forward=gate_forward, monitors={"gates": GateMonitor(tasks)})
    return ctx.save(moe_model(ctx, net, tasks, [s.gpp_std], [s.gpp_mean], {
        "expert_utilisation": last_utilisation(ctx.history["single-gpp"])}))


@register_method("single-task-sif", needs_sites=True, sif_product="sif_oco2",
                 outputs=("sif", "gpp"), comparison="multitask", track_split=True,
                 description="the MoE network with only its SIF task, on the same track rows; "
                             "GPP = per-IGBP slope x reconstructed SIF",
                 config_sections=_SECTIONS + ("sif_conversion", "min_class_samples"))
def fit_sif(ctx):
    """Train a SIF-only MMoE on the fitting soundings, then fit GPP/SIF slopes at the sites."""
    cfg, mt = ctx.config, ctx.config.multitask
    data = prepare(ctx, relation=False)
    tasks = ("sif",)
    share = mt.proportions[0] / sum(mt.proportions)
    rows = None if mt.phase.samples_per_epoch is None else int(mt.phase.samples_per_epoch * share)
    torch.manual_seed(ctx.seed)
    net = build_moe(ctx, tasks, [data.sif_std], [data.sif_mean]).inner
    stream = loader(ctx, data, (mt.proportions[0], 0.0, 0.0), sites=False)
    val = validation_rows(ctx, data, stream, tracks=True, sites=False)
    loss = multitask_loss(tasks, weights={"sif": 1.0}, sif_scale=(data.sif_mean, data.sif_std),
                          gpp_scale=(0.0, 1.0), relation=None, physics_weight=0.0)
    ctx.history["single-sif"] = ctx.run_phase(
        "single-sif", net, mt.phase, batches=epoch_batches(stream, ctx, rows), val=val,
        loss=loss, forward=gate_forward, monitors={"gates": GateMonitor(tasks)})
    ctx.provenance["history"] = ctx.history
    module, info = sif_conversion(ctx, net, (data.sif_mean, data.sif_std), with_sif=True)
    scale, offset = [data.sif_std, 1.0], [data.sif_mean, 0.0]
    floored = NonNegative(module, scale, offset, [1]).eval()
    model = TorchModel(floored, ctx.spec, outputs={t: dict(OUTPUTS[t]) for t in ("sif", "gpp")},
                       output_scale=scale, output_offset=offset, kind="sif-linear",
                       net=cfg.moe, method=ctx.method,
                       provenance={**ctx.provenance, "sif_conversion": info},
                       extra={"n_out_base": 1, "base_kind": "moe", "tasks": list(tasks),
                              "with_sif": True, "conversion": info,
                              "expert_utilisation": last_utilisation(ctx.history["single-sif"])})
    return ctx.save(model)
