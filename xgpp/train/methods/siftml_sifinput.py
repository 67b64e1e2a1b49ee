"""SIFTML variant: the pre-trained network's SIF as one more input of a GPP network.

Instead of transferring weights, transfer the SIF estimate: the SIF-pre-trained MLP is frozen
and its (normalised) SIF is appended to the drivers as the input of a new GPP MLP, trained on
the sites' GPP like ``ec-only`` (``config.ec``).  Both networks live in one module
(:class:`xgpp.models.mlp.SIFInputMLP`, kind ``"mlp-sif-input"``), so the bundle reads the same
drivers as every other and predicts chunk by chunk.
"""

from __future__ import annotations

from xgpp.models.base import OUTPUTS
from xgpp.models.bundle import TorchModel
from xgpp.models.mlp import MLP, SIFInputMLP, build_seeded
from xgpp.train.losses import mse
from xgpp.train.methods import register_method
from xgpp.train.methods._mlp import nonnegative_gpp, release
from xgpp.train.methods._pretrain import pretrained_mlp
from xgpp.train.methods.siftml import PRETRAIN_SECTIONS, SITE_SECTIONS

__all__ = ["fit"]


@register_method("siftml-sifinput", needs_sites=True, sif_product="sif_tropomi",
                 comparison="transfer-variant",
                 description="GPP network on the drivers plus the frozen SIF-pre-trained "
                             "network's SIF",
                 config_sections=PRETRAIN_SECTIONS + ("ec",) + SITE_SECTIONS)
def fit(ctx):
    """Pre-train the SIF MLP, freeze it, train a GPP MLP on drivers + its SIF at the sites."""
    cfg, spec = ctx.config, ctx.spec
    site_val = ctx.site_split.val_batch()
    sif_net, sif_scale = pretrained_mlp(ctx)
    for p in sif_net.parameters():
        p.requires_grad_(False)
    gpp_net = build_seeded(lambda: MLP(spec.n_features + 1, 1, cfg.net,
                                       embed_column=spec.embed_column), ctx.seed + 2)
    module = SIFInputMLP(sif_net, gpp_net.to(ctx.device))
    floored = nonnegative_gpp(ctx, module)  # GPP >= 0, in training as in prediction
    ctx.history["gpp"] = ctx.run_phase("gpp", floored, cfg.ec, params=list(gpp_net.parameters()),
                                       batches=ctx.site_batches("gpp", cfg.ec), val=site_val,
                                       loss=mse("gpp"))
    s = ctx.site_split
    ctx.provenance["history"] = ctx.history
    model = TorchModel(release(floored), spec, outputs={"gpp": dict(OUTPUTS["gpp"])},
                       output_scale=[s.gpp_std], output_offset=[s.gpp_mean],
                       kind="mlp-sif-input", net=cfg.net, method=ctx.method,
                       provenance=ctx.provenance,
                       extra={"sif_net": cfg.net.to_dict(), "n_out_sif": 1,
                              "sif_input": {"mean": sif_scale[0], "std": sif_scale[1],
                                            "units": OUTPUTS["sif"]["units"]}})
    return ctx.save(model)
