"""A configurable multilayer perceptron: feature layers (the trunk) and a linear head.

The split into ``trunk`` and ``head`` is what transfer learning needs: SIFTML pre-trains the
whole network on SIF, then fine-tunes a new head (and optionally the trunk) on EC GPP.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from xgpp.models.registry import register_architecture

__all__ = ["ACTIVATIONS", "MLP", "MLPConfig"]

#: Activation name -> module class (data, not if-chains).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
}


@dataclass(frozen=True)
class MLPConfig:
    """Architecture of the network.

    Attributes
    ----------
    hidden : tuple of int
        Widths of the hidden (feature) layers.
    activation : str
        One of :data:`ACTIVATIONS`.
    dropout : float
        Dropout probability after each hidden layer (0 for none).
    embed_dim : int
        Width of the IGBP embedding when the feature config uses ``igbp="embedding"``.
    """

    hidden: tuple[int, ...] = (128, 128, 64)
    activation: str = "silu"
    dropout: float = 0.0
    embed_dim: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; use one of "
                             f"{sorted(ACTIVATIONS)}.")
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden={self.hidden!r} must list at least one positive width.")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout={self.dropout} must lie in [0, 1).")

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {**asdict(self), "hidden": list(self.hidden)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MLPConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(**{**d, "hidden": tuple(d.get("hidden", cls.hidden))})


class MLP(nn.Module):
    """Feature layers plus a linear head; optional IGBP embedding of one input column.

    Parameters
    ----------
    n_in : int
        Number of feature columns.
    n_out : int
        Number of outputs (normalised targets).
    config : MLPConfig
    embed_column : int, optional
        Index of a column holding an IGBP class index to embed (removed from the dense input).
    n_classes : int
        Number of IGBP classes for the embedding.
    """

    def __init__(self, n_in: int, n_out: int, config: MLPConfig, *,
                 embed_column: int | None = None, n_classes: int = 17) -> None:
        super().__init__()
        self.embed_column = embed_column
        width = n_in
        if embed_column is not None:
            self.embedding = nn.Embedding(n_classes, config.embed_dim)
            width = n_in - 1 + config.embed_dim
        layers: list[nn.Module] = []
        for h in config.hidden:
            layers += [nn.Linear(width, h), ACTIVATIONS[config.activation]()]
            if config.dropout:
                layers.append(nn.Dropout(config.dropout))
            width = h
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_out)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature-layer output (the representation transferred from SIF to GPP)."""
        if self.embed_column is not None:
            j = self.embed_column
            cls_ = x[:, j].round().long().clamp(0, self.embedding.num_embeddings - 1)
            x = torch.cat([x[:, :j], x[:, j + 1:], self.embedding(cls_)], dim=1)
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised outputs ``(n, n_out)``."""
        return self.head(self.encode(x))

    def feature_parameters(self) -> list[nn.Parameter]:
        """Parameters of the feature layers (trunk and embedding), frozen by ``"head"`` tuning."""
        return [p for name, p in self.named_parameters() if not name.startswith("head.")]


@register_architecture("mlp", config=MLPConfig, description="feature layers + linear head")
def _build_mlp(meta: dict[str, Any]) -> nn.Module:
    from xgpp.models.features import FeatureSpec

    spec = FeatureSpec.from_dict(meta["features"])
    return MLP(spec.n_features, int(meta["n_out"]), MLPConfig.from_dict(meta["net"]),
               embed_column=spec.embed_column)
