"""SIFTML: transfer learning from satellite SIF to eddy-covariance GPP.

Method (Guan, Ma, Zeng & Lin, EGU 2026; precursor SIFEC-TL, Ma, Guan et al. 2025, IJAEO
139:104503):

1. **Pre-train** an MLP on every valid grid pixel to predict SIF from the drivers and static
   features.  SIF is normalised per source domain, ``(SIF - mean) / std`` with the mean and
   standard deviation of that SIF product, so rescaling the product (a different retrieval
   window or calibration) leaves the pre-trained network unchanged.
2. **Fine-tune** on EC GPP at the training sites, by strategy:

   ``"head"``  a new linear head on frozen feature layers;
   ``"full"``  a new head and all layers trained at the lower fine-tuning learning rate;
   ``"both"``  ``"head"`` first, then ``"full"`` from there.

The training loop lives in :mod:`xgpp.train`; this module holds the strategy table and the
network surgery it needs.
"""

from __future__ import annotations

import torch
from torch import nn

from xgpp.models.mlp import MLP

__all__ = ["STRATEGIES", "new_head", "set_trainable"]

#: strategy -> fine-tuning phases in order; each phase names which parameters train
STRATEGIES: dict[str, tuple[str, ...]] = {
    "head": ("head",),
    "full": ("full",),
    "both": ("head", "full"),
}


def new_head(net: MLP, n_out: int = 1, *, seed: int = 0) -> MLP:
    """Replace the network's head by a freshly initialised linear layer (seeded)."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    net.head = nn.Linear(net.head.in_features, n_out).to(net.head.weight.device)
    torch.random.set_rng_state(gen_state)
    return net


def set_trainable(net: MLP, phase: str) -> list[nn.Parameter]:
    """Freeze or unfreeze parameters for ``phase`` and return those that train.

    ``"head"`` trains the head only; every other phase (``"full"``, ``"pretrain"``, ``"ec"``)
    trains all parameters.
    """
    head_only = phase == "head"
    for p in net.feature_parameters():
        p.requires_grad_(not head_only)
    for p in net.head.parameters():
        p.requires_grad_(True)
    return [p for p in net.parameters() if p.requires_grad]
