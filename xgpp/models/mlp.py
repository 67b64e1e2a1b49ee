"""A configurable multilayer perceptron: feature layers (the trunk) and a linear head.

The split into ``trunk`` and ``head`` is what transfer learning needs: SIFTML pre-trains the
whole network on SIF, then fine-tunes a new head (and optionally the trunk) on EC GPP.
:class:`SIFInputMLP` stacks two of them: a frozen SIF network whose estimate is one more input
of a GPP network (the ``siftml-sifinput`` variant).

Weights are initialised from a local :class:`torch.Generator` (:func:`init_parameters`,
:func:`build_seeded`), never from torch's global random state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from xgpp.errors import InputError
from xgpp.models.registry import register_architecture

__all__ = ["ACTIVATIONS", "MLP", "MLPConfig", "SIFInputMLP", "build_seeded", "init_parameters"]

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
            raise InputError(f"unknown activation {self.activation!r}; use one of "
                             f"{sorted(ACTIVATIONS)}.")
        if not self.hidden or min(self.hidden) < 1:
            raise InputError(f"hidden={self.hidden!r} must list at least one positive width.")
        if not 0 <= self.dropout < 1:
            raise InputError(f"dropout={self.dropout} must lie in [0, 1).")

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

    def hidden_layers(self) -> list[nn.Linear]:
        """The hidden (feature) layers' linear maps, input side first."""
        return [m for m in self.trunk if isinstance(m, nn.Linear)]

    def first_layers_parameters(self, k: int) -> list[nn.Parameter]:
        """Parameters of the first ``k`` hidden layers (and of the IGBP embedding, when k >= 1).

        The embedding feeds the first hidden layer, so it is frozen with it.
        """
        layers = self.hidden_layers()
        if not 0 <= k <= len(layers):
            raise InputError(f"frozen_layers={k}: the network has {len(layers)} hidden layers "
                             f"(MLPConfig.hidden); use 0..{len(layers)}.")
        params = [p for layer in layers[:k] for p in layer.parameters()]
        if k and self.embed_column is not None:
            params = list(self.embedding.parameters()) + params
        return params


_M = TypeVar("_M", bound=nn.Module)


def init_parameters(module: _M, generator: torch.Generator) -> _M:
    """Initialise every ``Linear`` and ``Embedding`` of ``module`` in place from ``generator``.

    The same distributions as torch's defaults (``Linear``: Kaiming-uniform weights with
    ``a = sqrt(5)``, biases uniform in +-1/sqrt(fan_in); ``Embedding``: standard normal), drawn
    in module order, so on the CPU the weights equal those of ``torch.manual_seed(seed)`` and
    construction, without touching torch's global random state.
    """
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
                if m.bias is not None:
                    bound = 1 / math.sqrt(m.in_features) if m.in_features > 0 else 0.0
                    nn.init.uniform_(m.bias, -bound, bound, generator=generator)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, generator=generator)
            elif any(True for _ in m.parameters(recurse=False)):
                raise TypeError(f"init_parameters cannot initialise {type(m).__name__} "
                                "(only Linear and Embedding layers).")
    return module


def build_seeded(factory: Callable[[], _M], seed: int) -> _M:
    """``factory()`` built on the CPU with weights from a local generator seeded by ``seed``.

    The module is constructed on the ``meta`` device (no random draw), materialised on the CPU
    and initialised by :func:`init_parameters`; torch's global random state is left alone.
    """
    with torch.device("meta"):
        module = factory()
    module = module.to_empty(device="cpu")
    return init_parameters(module, torch.Generator().manual_seed(int(seed)))


class SIFInputMLP(nn.Module):
    """A GPP network fed the drivers and a frozen SIF network's estimate.

    ``gpp_net(cat([x, sif_net(x)[:, :1]]))``: the SIF network (pre-trained on SIF, its output
    normalised SIF) runs first inside the module, so the bundle takes the same feature rows as
    any other and predicts in chunks like any other.  The SIF branch stays in eval mode (no
    dropout) and its parameters are frozen while training.

    Parameters
    ----------
    sif_net : MLP
        Maps ``n_features`` columns to normalised SIF (first output column).
    gpp_net : MLP
        Maps ``n_features + 1`` columns (the features, then normalised SIF) to normalised GPP.
    """

    def __init__(self, sif_net: MLP, gpp_net: MLP) -> None:
        super().__init__()
        self.sif_net = sif_net
        self.gpp_net = gpp_net

    def train(self, mode: bool = True) -> SIFInputMLP:
        """Train mode for the GPP network only; the SIF branch stays in eval mode."""
        super().train(mode)
        self.sif_net.eval()
        return self

    def sif(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised SIF ``(n, 1)`` of the SIF branch."""
        return self.sif_net(x)[:, :1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised GPP ``(n, n_out)``."""
        return self.gpp_net(torch.cat([x, self.sif(x)], dim=1))


@register_architecture("mlp", config=MLPConfig, description="feature layers + linear head")
def _build_mlp(meta: dict[str, Any]) -> nn.Module:
    from xgpp.models.features import FeatureSpec

    spec = FeatureSpec.from_dict(meta["features"])
    return MLP(spec.n_features, int(meta["n_out"]), MLPConfig.from_dict(meta["net"]),
               embed_column=spec.embed_column)


@register_architecture("mlp-sif-input", config=MLPConfig,
                       description="frozen SIF MLP whose estimate is an extra input of a GPP MLP")
def _build_sif_input_mlp(meta: dict[str, Any]) -> nn.Module:
    from xgpp.models.features import FeatureSpec

    spec = FeatureSpec.from_dict(meta["features"])
    sif_cfg = MLPConfig.from_dict(meta.get("sif_net", meta["net"]))
    sif_net = MLP(spec.n_features, int(meta.get("n_out_sif", 1)), sif_cfg,
                  embed_column=spec.embed_column)
    gpp_net = MLP(spec.n_features + 1, int(meta["n_out"]), MLPConfig.from_dict(meta["net"]),
                  embed_column=spec.embed_column)
    return SIFInputMLP(sif_net, gpp_net)
