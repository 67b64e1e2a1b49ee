"""The multi-task mixture of experts for sparse (OCO-2-like) SIF.

Shared experts with one gate per task (MMoE, :class:`xgpp.models.moe.MMoE`), a SIF head and a
GPP head, trained at once on mixed batches: track soundings (masked, count-weighted SIF
loss), EC site samples (masked GPP loss) and unlabelled pixels, with a physics term tying the
heads together on every row (``GPP = a_k * SIF + b_k`` per IGBP class).  GPP passes through
the softplus floor (never negative).  Expert utilisation is logged per epoch and stored in the
bundle.
"""

from __future__ import annotations

from xgpp.models.base import OUTPUTS
from xgpp.models.bundle import TorchModel
from xgpp.models.moe import MMoE
from xgpp.models.outputs import NonNegative
from xgpp.train.methods import register_method
from xgpp.train.methods._mlp import release
from xgpp.train.methods._multitask import (
    GateMonitor,
    Relation,
    WithRelation,
    epoch_batches,
    gate_forward,
    loader,
    multitask_loss,
    prepare,
    validation_rows,
)

TASKS = ("sif", "gpp")


def build_moe(ctx, tasks: tuple[str, ...], scale: list[float], offset: list[float]
              ) -> NonNegative:
    """The configured MMoE (seeded) behind the GPP floor, on the run's device."""
    import torch

    torch.manual_seed(ctx.seed)
    spec = ctx.spec
    net = MMoE(spec.n_features, tasks, ctx.config.moe, embed_column=spec.embed_column)
    cols = [i for i, t in enumerate(tasks) if t == "gpp"]
    return NonNegative(net, scale, offset, cols).to(ctx.device)


def moe_model(ctx, net: NonNegative, tasks: tuple[str, ...], scale: list[float],
              offset: list[float], extra: dict) -> TorchModel:
    """The trained MoE as a bundle (outputs in task order, utilisation in ``extra``)."""
    ctx.provenance["history"] = ctx.history
    return TorchModel(release(net), ctx.spec, outputs={t: dict(OUTPUTS[t]) for t in tasks},
                      output_scale=scale, output_offset=offset, kind="moe",
                      net=ctx.config.moe, method=ctx.method, provenance=ctx.provenance,
                      extra={"tasks": list(tasks), **extra})


def best_epoch(history: list[dict]) -> dict | None:
    """The record of the epoch whose weights were kept (lowest validation loss)."""
    if not history:
        return None
    if all(r.get("val_loss") is not None for r in history):
        return min(history, key=lambda r: r["val_loss"])
    return history[-1]


def last_utilisation(history: list[dict]) -> dict | None:
    """The expert utilisation of the kept epoch (after early stopping, not the last one)."""
    rec = best_epoch(history)
    return rec.get("gates") if rec else None


@register_method("moe", needs_sites=True, sif_product="sif_oco2", outputs=TASKS,
                 track_split=True,
                 comparison="multitask",
                 description="multi-task mixture of experts on sparse SIF tracks and sites: "
                             "seamless SIF and GPP, physics-constrained",
                 config_sections=("features", "moe", "multitask", "val_sites", "site_window",
                                  "igbp_from", "sif_var"))
def fit(ctx):
    """Train the MMoE on mixed batches with the masked SIF/GPP losses and the physics term."""
    mt = ctx.config.multitask
    data = prepare(ctx)
    s = ctx.site_split
    scale, offset = [data.sif_std, s.gpp_std], [data.sif_mean, s.gpp_mean]
    net = build_moe(ctx, TASKS, scale, offset)
    rel = Relation(data.relation[0], data.relation[1],
                   learnable=mt.slopes == "learnable").to(ctx.device)
    model = WithRelation(net, rel)
    stream = loader(ctx, data, mt.proportions, sites=True)
    val = validation_rows(ctx, data, stream, tracks=True, sites=True)
    common = dict(weights={"sif": mt.sif_weight, "gpp": mt.gpp_weight},
                  sif_scale=(data.sif_mean, data.sif_std), gpp_scale=(s.gpp_mean, s.gpp_std))
    loss = multitask_loss(TASKS, relation=rel, physics_weight=mt.physics_weight, **common)
    val_loss = multitask_loss(TASKS, relation=None, physics_weight=0.0, **common)
    ctx.history["multitask"] = ctx.run_phase(
        "multitask", model, mt.phase, batches=epoch_batches(stream, ctx, mt.phase.samples_per_epoch),
        val=val, loss=loss, val_loss=val_loss, forward=gate_forward,
        monitors={"gates": GateMonitor(TASKS)})
    ctx.provenance["relation"] = rel.record()
    return ctx.save(moe_model(ctx, net, TASKS, scale, offset, {
        "expert_utilisation": last_utilisation(ctx.history["multitask"])}))
