"""SIFTML variants that change only the fine-tuning: fixed strategies, frozen layers, L2-SP.

* ``siftml-head``, ``siftml-full``: SIFTML with ``strategy`` fixed to ``"head"`` (linear probe
  on the SIF features) or ``"full"`` (all layers at once); ``siftml`` itself is ``"both"``.
* ``siftml-frozen``: ``strategy="frozen"``: a new head, then every layer but the first
  ``transfer.frozen_layers`` hidden layers, which keep their SIF-pre-trained weights.
* ``siftml-l2sp``: fine-tuning regularised toward the pre-trained weights (L2-SP; Li,
  Grandvalet & Davoine 2018, ICML): ``loss += alpha/2 ||w - w_pre||^2`` over the feature layers
  ``+ beta/2 ||w_head||^2`` over the new head (``transfer.l2sp_alpha``/``l2sp_beta``).

Pre-training is SIFTML's (shared through the pre-training cache).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from xgpp.models.siftml import STRATEGIES
from xgpp.train.losses import l2sp, mse
from xgpp.train.methods import register_method, siftml
from xgpp.train.methods._pretrain import pretrained_mlp
from xgpp.train.methods.siftml import PRETRAIN_SECTIONS, SITE_SECTIONS, finetune

__all__ = ["fit_l2sp", "with_config"]


def with_config(fit: Callable[[Any], Any], **changes: Any) -> Callable[[Any], Any]:
    """``fit`` with some config fields fixed (recorded in the bundle's provenance config)."""

    @functools.wraps(fit)
    def fixed(ctx):
        ctx.override(**changes)
        return fit(ctx)

    fixed.__doc__ = f"{(fit.__doc__ or '').strip()} Fixed: {changes}."
    return fixed


_COMMON = dict(needs_sites=True, sif_product="sif_tropomi", comparison="transfer-variant")

register_method("siftml-head", **_COMMON,
                description="SIFTML, fine-tuning only a new head on the frozen SIF features",
                config_sections=PRETRAIN_SECTIONS + ("head",) + SITE_SECTIONS,
                )(with_config(siftml.fit, strategy="head"))

register_method("siftml-full", **_COMMON,
                description="SIFTML, fine-tuning a new head and all layers at once",
                config_sections=PRETRAIN_SECTIONS + ("finetune",) + SITE_SECTIONS,
                )(with_config(siftml.fit, strategy="full"))

register_method("siftml-frozen", **_COMMON,
                description="SIFTML, the first transfer.frozen_layers hidden layers kept as "
                            "pre-trained (new head, then the rest)",
                config_sections=PRETRAIN_SECTIONS + ("head", "finetune", "transfer")
                + SITE_SECTIONS,
                )(with_config(siftml.fit, strategy="frozen"))


@register_method("siftml-l2sp", **_COMMON,
                 description="SIFTML fine-tuned with L2-SP: a pull toward the pre-trained "
                             "weights (transfer.l2sp_alpha, l2sp_beta)",
                 config_sections=PRETRAIN_SECTIONS + ("head", "finetune", "strategy",
                                                      "transfer") + SITE_SECTIONS)
def fit_l2sp(ctx):
    """Pre-train on SIF, then fine-tune by ``config.strategy`` with the L2-SP penalty.

    The penalty is in every fine-tuning phase's training loss, reported as the history parts
    ``l2sp`` (feature layers vs their pre-trained weights) and ``l2_head`` (the new head);
    early stopping uses the validation sites' GPP MSE alone.
    """
    net, _ = pretrained_mlp(ctx)
    reference = {k: v.detach().clone() for k, v in net.named_parameters()
                 if not k.startswith("head.")}
    tc = ctx.config.transfer
    return finetune(ctx, net, STRATEGIES[ctx.config.strategy],
                    loss=lambda n: l2sp(mse("gpp"), n, reference, alpha=tc.l2sp_alpha,
                                        beta=tc.l2sp_beta))
