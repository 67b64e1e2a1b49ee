"""SIFTML: pre-train on full-coverage SIF, fine-tune on EC GPP (``config.strategy``)."""

from __future__ import annotations

from xgpp.models.siftml import STRATEGIES, new_head, set_trainable
from xgpp.train.losses import mse
from xgpp.train.methods import register_method
from xgpp.train.methods._mlp import gpp_model, new_mlp, nonnegative_gpp
from xgpp.train.methods._pretrain import pretrain_on_sif


@register_method("siftml", needs_sites=True, sif_product="sif_tropomi",
                 description="transfer learning: pre-train on SIF, fine-tune on site GPP",
                 config_sections=("features", "net", "pretrain", "loader", "head", "finetune",
                                  "strategy", "val_sites", "site_window", "igbp_from",
                                  "sif_var"))
def fit(ctx):
    """Pre-train the MLP on SIF, then fine-tune a new head (and all layers) on site GPP."""
    cfg = ctx.config
    site_val = ctx.site_split.val_batch()
    net = new_mlp(ctx)
    set_trainable(net, "pretrain")
    pretrain_on_sif(ctx, net)
    new_head(net, 1, seed=ctx.seed + 1)
    floored = nonnegative_gpp(ctx, net)  # GPP >= 0, in training as in prediction
    for phase in STRATEGIES[cfg.strategy]:
        pc = cfg.head if phase == "head" else cfg.finetune
        ctx.history[phase] = ctx.run_phase(phase, floored, pc,
                                           params=set_trainable(net, phase),
                                           batches=ctx.site_batches(phase, pc), val=site_val,
                                           loss=mse("gpp"))
    return ctx.save(gpp_model(ctx, floored))
