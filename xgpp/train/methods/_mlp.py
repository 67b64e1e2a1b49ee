"""Shared by the MLP methods: build the network, and wrap the trained network as a bundle."""

from __future__ import annotations

import torch

from xgpp.models.base import OUTPUTS
from xgpp.models.bundle import TorchModel
from xgpp.models.mlp import MLP, build_seeded
from xgpp.models.outputs import NonNegative

__all__ = ["gpp_model", "new_mlp", "nonnegative_gpp", "release"]


def new_mlp(ctx, n_out: int = 1) -> MLP:
    """The configured MLP on the run's device, seeded by the run's seed (local generator)."""
    spec = ctx.spec
    return build_seeded(lambda: MLP(spec.n_features, n_out, ctx.config.net,
                                    embed_column=spec.embed_column), ctx.seed).to(ctx.device)


def release(net: torch.nn.Module) -> torch.nn.Module:
    """The trained network on the CPU, in eval mode, every parameter trainable again."""
    net = net.cpu().eval()
    for p in net.parameters():
        p.requires_grad_(True)
    return net


def nonnegative_gpp(ctx, net: MLP) -> NonNegative:
    """``net`` (normalised site GPP) behind the softplus floor at 0 gC m-2 d-1."""
    s = ctx.site_split
    return NonNegative(net, [s.gpp_std], [s.gpp_mean], [0]).to(ctx.device)


def gpp_model(ctx, net: NonNegative) -> TorchModel:
    """A GPP bundle of a (floored) MLP trained on normalised site GPP."""
    s = ctx.site_split
    ctx.provenance["history"] = ctx.history
    return TorchModel(release(net), ctx.spec, outputs={"gpp": dict(OUTPUTS["gpp"])},
                      output_scale=[s.gpp_std], output_offset=[s.gpp_mean], kind="mlp",
                      net=ctx.config.net, method=ctx.method, provenance=ctx.provenance)
