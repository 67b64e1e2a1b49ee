"""SIFTML: pre-train on full-coverage SIF, fine-tune on EC GPP (``config.strategy``).

:func:`~xgpp.train.methods._pretrain.pretrained_mlp` and :func:`finetune` are the two halves,
shared with the variants (``siftml_variants``, ``siftml_sifinput``, ``siftml_gppconv``).
"""

from __future__ import annotations

from collections.abc import Callable

from xgpp.models.mlp import MLP
from xgpp.models.siftml import STRATEGIES, new_head, set_trainable
from xgpp.train.losses import mse
from xgpp.train.methods import register_method
from xgpp.train.methods._mlp import gpp_model, nonnegative_gpp
from xgpp.train.methods._pretrain import pretrained_mlp

__all__ = ["PRETRAIN_SECTIONS", "SITE_SECTIONS", "finetune", "fit", "pretrained_mlp"]

#: what every SIFTML run reads, besides its fine-tuning phases
PRETRAIN_SECTIONS = ("features", "net", "pretrain", "loader", "sif_var")
SITE_SECTIONS = ("val_sites", "site_window", "igbp_from")


def finetune(ctx, net: MLP, phases: tuple[str, ...], *,
             loss: Callable[[MLP], Callable] | None = None):
    """Fine-tune a new head (and more, by phase) of pre-trained ``net`` on site GPP; save.

    Parameters
    ----------
    phases : tuple of str
        Phases in order (a :data:`~xgpp.models.siftml.STRATEGIES` entry): ``"head"`` runs
        with ``config.head``, ``"full"`` and ``"partial"`` with ``config.finetune``.
    loss : callable, optional
        ``loss(net) -> loop loss`` built after the new head exists (e.g. with an L2-SP
        penalty); default the MSE of normalised GPP.  Early stopping always uses the
        validation sites' MSE.
    """
    cfg = ctx.config
    site_val = ctx.site_split.val_batch()
    new_head(net, 1, seed=ctx.seed + 1)
    floored = nonnegative_gpp(ctx, net)  # GPP >= 0, in training as in prediction
    train_loss = mse("gpp") if loss is None else loss(net)
    for phase in phases:
        pc = cfg.head if phase == "head" else cfg.finetune
        params = set_trainable(net, phase, frozen_layers=cfg.transfer.frozen_layers)
        ctx.history[phase] = ctx.run_phase(phase, floored, pc, params=params,
                                           batches=ctx.site_batches(phase, pc), val=site_val,
                                           loss=train_loss, val_loss=mse("gpp"))
    return ctx.save(gpp_model(ctx, floored))


@register_method("siftml", needs_sites=True, sif_product="sif_tropomi",
                 description="transfer learning: pre-train on SIF, fine-tune on site GPP",
                 config_sections=PRETRAIN_SECTIONS + ("head", "finetune", "strategy",
                                                      "transfer") + SITE_SECTIONS)
def fit(ctx):
    """Pre-train the MLP on SIF, then fine-tune a new head (and all layers) on site GPP."""
    net, _ = pretrained_mlp(ctx)
    return finetune(ctx, net, STRATEGIES[ctx.config.strategy])
