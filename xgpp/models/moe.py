"""A multi-gate mixture of experts (MMoE) for two related tasks: SIF reconstruction and GPP.

Architecture (Ma et al. 2018, KDD, "Modeling Task Relationships in Multi-task Learning with
Multi-gate Mixture-of-Experts")::

    x --encode--> h --+--> expert_1(h) ... expert_E(h)          (shared, stacked: n x E x d)
                      |
                      +--> gate_t(h) = softmax(W_t h / temperature)   (one per task: n x E)
                                   |
    mix_t = sum_e gate_t[:, e] * expert_e(h)                            (n x d, per task)
    y_t   = tower_t(mix_t)                                              (n x 1, per task)

*Encoding* is that of :class:`~xgpp.models.mlp.MLP`: when the features carry the IGBP class as
one index column (``FeatureConfig(igbp="embedding")``), that column is replaced by an
``nn.Embedding`` of width ``embed_dim``.  Each *expert* is an MLP trunk with the widths
``expert_hidden`` (all experts alike, so their outputs stack into one tensor).  Each task has
its own *gate* -- a linear map of the encoded input to ``n_experts`` logits -- and its own
*tower* (hidden layers ``tower_hidden`` and a 1-unit linear output).  Tasks that share
structure can share experts, tasks that conflict can keep experts of their own; the gates
learn which.

Gate temperature
    The gate weights are ``softmax(logits / temperature)``.  ``temperature > 1`` flattens them
    (every expert is mixed in, more like an ensemble), ``temperature < 1`` sharpens them
    towards a hard choice of one expert per sample.

Utilisation record
    A mixture of experts can *collapse*: a gate puts (almost) all weight on one expert and the
    others stop learning.  :class:`GateStats` accumulates the gate weights over batches (and
    :func:`gate_utilisation` summarises one tensor) per task: the mean weight of each expert,
    the entropy of that mean distribution (also divided by ``ln(n_experts)``: 1 for uniform use
    of all experts, 0 for one expert), the mean per-sample entropy (low when each sample picks
    one expert even if different samples pick different ones) and the largest mean share.  The
    record is a JSON-ready dict, fit for training logs and bundle provenance.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from xgpp.errors import InputError, UnknownOptionError
from xgpp.models.features import FeatureSpec
from xgpp.models.mlp import ACTIVATIONS
from xgpp.models.registry import register_architecture

__all__ = ["GateStats", "MMoE", "MoEConfig", "gate_utilisation"]


def _integer(name: str, value: Any, *, minimum: int) -> int:
    """``value`` as an int of at least ``minimum``, else a ``ValueError`` naming ``name``."""
    ok = isinstance(value, int | np.integer) and not isinstance(value, bool)
    if not ok and isinstance(value, float | np.floating) and float(value).is_integer():
        ok = True
    if not ok or int(value) < minimum:
        raise InputError(f"MoEConfig.{name}={value!r}; it must be an integer >= {minimum}.")
    return int(value)


def _widths(name: str, value: Any, *, allow_empty: bool) -> tuple[int, ...]:
    """``value`` as a tuple of positive layer widths, else a ``ValueError`` naming ``name``."""
    need = "a sequence of positive integer widths" + ("" if allow_empty else " (at least one)")
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        raise InputError(f"MoEConfig.{name}={value!r}; it must be {need}.")
    value = tuple(value)
    try:
        out = tuple(_integer(name, h, minimum=1) for h in value)
    except ValueError:
        raise InputError(f"MoEConfig.{name}={value!r}; it must be {need}.") from None
    if not out and not allow_empty:
        raise InputError(f"MoEConfig.{name}={value!r}; it must be {need}.")
    return out


@dataclass(frozen=True)
class MoEConfig:
    """Architecture of the multi-gate mixture of experts.

    Attributes
    ----------
    n_experts : int
        Number of shared experts (>= 1; 1 is a shared-bottom network).
    expert_hidden : tuple of int
        Widths of each expert's hidden layers (an MLP trunk); the last is the width mixed by the
        gates and fed to the towers.
    tower_hidden : tuple of int
        Widths of each task tower's hidden layers before its 1-unit linear output (may be
        empty: the tower is then one linear layer).
    activation : str
        One of :data:`xgpp.models.mlp.ACTIVATIONS`, used in experts and towers.
    dropout : float
        Dropout probability after each hidden layer of experts and towers (0 for none).
    embed_dim : int
        Width of the IGBP embedding when the feature config uses ``igbp="embedding"``.
    temperature : float
        Gate softmax temperature (> 0): ``gates = softmax(logits / temperature)``; larger is
        flatter.
    """

    n_experts: int = 4
    expert_hidden: tuple[int, ...] = (128, 64)
    tower_hidden: tuple[int, ...] = (32,)
    activation: str = "silu"
    dropout: float = 0.0
    embed_dim: int = 4
    temperature: float = 1.0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "n_experts", _integer("n_experts", self.n_experts, minimum=1))
        set_(self, "expert_hidden", _widths("expert_hidden", self.expert_hidden,
                                            allow_empty=False))
        set_(self, "tower_hidden", _widths("tower_hidden", self.tower_hidden, allow_empty=True))
        if not isinstance(self.activation, str) or self.activation not in ACTIVATIONS:
            raise InputError(f"MoEConfig.activation={self.activation!r} is unknown; use one of "
                             f"{sorted(ACTIVATIONS)}.")
        if (isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float)
                or not 0 <= self.dropout < 1):
            raise InputError(f"MoEConfig.dropout={self.dropout!r}; it must be a number in "
                             "[0, 1).")
        set_(self, "dropout", float(self.dropout))
        set_(self, "embed_dim", _integer("embed_dim", self.embed_dim, minimum=1))
        if (isinstance(self.temperature, bool) or not isinstance(self.temperature, int | float)
                or not math.isfinite(self.temperature) or self.temperature <= 0):
            raise InputError(f"MoEConfig.temperature={self.temperature!r}; it must be a finite "
                             "number > 0 (1 is the plain softmax, larger is flatter).")
        set_(self, "temperature", float(self.temperature))

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {**asdict(self), "expert_hidden": list(self.expert_hidden),
                "tower_hidden": list(self.tower_hidden)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MoEConfig:
        """Inverse of :meth:`to_dict`; missing keys take their defaults.

        Raises
        ------
        TypeError
            If ``d`` has a key that is not a field (e.g. another architecture's config).
        """
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise UnknownOptionError(f"MoEConfig has no field(s) {unknown}; known fields are {known}.")
        return cls(**d)


def _hidden_layers(width: int, widths: tuple[int, ...], config: MoEConfig
                   ) -> tuple[list[nn.Module], int]:
    """Linear + activation (+ dropout) layers of ``widths`` from ``width``; and the out width."""
    layers: list[nn.Module] = []
    for h in widths:
        layers += [nn.Linear(width, h), ACTIVATIONS[config.activation]()]
        if config.dropout:
            layers.append(nn.Dropout(config.dropout))
        width = h
    return layers, width


def _check_tasks(tasks: Any) -> tuple[str, ...]:
    if isinstance(tasks, str) or not hasattr(tasks, "__iter__"):
        raise InputError(f"tasks={tasks!r}; give a sequence of task names, e.g. ('sif', 'gpp').")
    tasks = tuple(tasks)
    if not tasks:
        raise InputError("tasks=(); an MMoE needs at least one task.")
    reserved = nn.ModuleDict()
    for t in tasks:
        if not isinstance(t, str) or not t:
            raise InputError(f"task names must be non-empty strings; got {t!r} in {tasks!r}.")
        if "." in t or hasattr(reserved, t):
            raise InputError(f"task name {t!r} cannot name a torch submodule (it contains '.' "
                             "or is an attribute of nn.ModuleDict); choose another.")
    if len(set(tasks)) != len(tasks):
        dup = sorted({t for t in tasks if tasks.count(t) > 1})
        raise InputError(f"task names must be unique; {dup} repeat in {tasks!r}.")
    return tasks


class MMoE(nn.Module):
    """Shared experts, one softmax gate and one tower per task; optional IGBP embedding.

    Parameters
    ----------
    n_in : int
        Number of feature columns.
    tasks : tuple of str
        Task names (unique); output column ``i`` is task ``tasks[i]``.
    config : MoEConfig
    embed_column : int, optional
        Index of a column holding an IGBP class index to embed (removed from the dense input).
    n_classes : int
        Number of IGBP classes for the embedding.

    Attributes
    ----------
    tasks : tuple of str
    experts : torch.nn.ModuleList
        ``n_experts`` trunks of widths ``config.expert_hidden``.
    gates : torch.nn.ModuleDict
        Task -> ``nn.Linear(width_in, n_experts)`` on the encoded input.
    towers : torch.nn.ModuleDict
        Task -> ``nn.Sequential(hidden layers, nn.Linear(..., 1))``.
    """

    def __init__(self, n_in: int, tasks: tuple[str, ...] = ("sif", "gpp"),
                 config: MoEConfig = MoEConfig(), *,  # noqa: B008 - frozen, immutable default
                 embed_column: int | None = None, n_classes: int = 17) -> None:
        super().__init__()
        if isinstance(n_in, bool) or not isinstance(n_in, int | np.integer) or n_in < 1:
            raise InputError(f"n_in={n_in!r}; it must be a positive number of feature columns.")
        n_in = int(n_in)
        self.tasks = _check_tasks(tasks)
        self.config = config
        self.temperature = config.temperature
        self.embed_column = embed_column
        width = n_in
        if embed_column is not None:
            if not 0 <= embed_column < n_in:
                raise InputError(f"embed_column={embed_column} is not a column of the "
                                 f"{n_in} inputs.")
            if n_classes < 1:
                raise InputError(f"n_classes={n_classes}; the embedding needs >= 1 class.")
            self.embedding = nn.Embedding(n_classes, config.embed_dim)
            width = n_in - 1 + config.embed_dim
        self.width_in = width
        experts = []
        for _ in range(config.n_experts):
            layers, expert_width = _hidden_layers(width, config.expert_hidden, config)
            experts.append(nn.Sequential(*layers))
        self.experts = nn.ModuleList(experts)
        self.expert_width = expert_width
        self.gates = nn.ModuleDict({t: nn.Linear(width, config.n_experts) for t in self.tasks})
        towers = {}
        for t in self.tasks:
            layers, w = _hidden_layers(expert_width, config.tower_hidden, config)
            towers[t] = nn.Sequential(*layers, nn.Linear(w, 1))
        self.towers = nn.ModuleDict(towers)

    @property
    def n_experts(self) -> int:
        """Number of experts."""
        return len(self.experts)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Encoded input ``(n, width_in)`` seen by experts and gates (IGBP column embedded)."""
        if self.embed_column is not None:
            j = self.embed_column
            cls_ = x[:, j].round().long().clamp(0, self.embedding.num_embeddings - 1)
            x = torch.cat([x[:, :j], x[:, j + 1:], self.embedding(cls_)], dim=1)
        return x

    def forward_with_gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised outputs and the gate weights.

        Parameters
        ----------
        x : torch.Tensor
            Normalised features ``(n, n_in)``.

        Returns
        -------
        out : torch.Tensor
            ``(n, len(tasks))``, columns in :attr:`tasks` order (no output activation).
        gates : torch.Tensor
            ``(len(tasks), n, n_experts)`` softmax weights (each row sums to 1).
        """
        h = self.encode(x)
        experts = torch.stack([e(h) for e in self.experts], dim=1)           # (n, E, d)
        logits = torch.stack([self.gates[t](h) for t in self.tasks], dim=0)  # (T, n, E)
        gates = torch.softmax(logits / self.temperature, dim=-1)
        mixed = torch.einsum("tne,ned->tnd", gates, experts)                 # (T, n, d)
        out = torch.cat([self.towers[t](mixed[i]) for i, t in enumerate(self.tasks)], dim=1)
        return out, gates

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised outputs ``(n, len(tasks))``, columns in :attr:`tasks` order."""
        return self.forward_with_gates(x)[0]

    def feature_parameters(self) -> list[nn.Parameter]:
        """Shared parameters (embedding and experts); gates and towers are per task."""
        return [p for name, p in self.named_parameters()
                if not name.startswith(("gates.", "towers."))]


class GateStats:
    """Expert utilisation per task, accumulated over batches of gate weights.

    Parameters
    ----------
    tasks : sequence of str
        Task names, in the order of the first axis of the gate tensors.

    Examples
    --------
    >>> stats = GateStats(model.tasks)                      # doctest: +SKIP
    >>> for x in batches:                                   # doctest: +SKIP
    ...     out, gates = model.forward_with_gates(x)
    ...     stats.update(gates)
    >>> stats.result()["gpp"]["normalised_entropy"]         # doctest: +SKIP
    """

    def __init__(self, tasks: tuple[str, ...] | list[str]) -> None:
        self.tasks = _check_tasks(tasks)
        self.reset()

    def reset(self) -> None:
        """Forget all accumulated batches."""
        self._sum: torch.Tensor | None = None      # (T, E) sum of gate weights, float64
        self._entropy: torch.Tensor | None = None  # (T,) sum of per-sample entropies
        self.n = 0

    @torch.no_grad()
    def update(self, gates: torch.Tensor | np.ndarray) -> None:
        """Add one batch of gate weights ``(len(tasks), n, n_experts)``.

        The sums stay on the tensor's device (no host synchronisation per batch).
        """
        g = torch.as_tensor(gates).detach()
        if g.ndim != 3 or g.shape[0] != len(self.tasks):
            raise InputError(f"gates of shape {tuple(g.shape)}; expected (len(tasks)="
                             f"{len(self.tasks)}, n, n_experts).")
        if self._sum is not None and g.shape[2] != self._sum.shape[1]:
            raise InputError(f"gates have {g.shape[2]} experts; earlier batches had "
                             f"{self._sum.shape[1]}.")
        g = g.to(torch.float64)
        s = g.sum(dim=1)
        ent = -torch.special.xlogy(g, g).sum(dim=(1, 2))
        if self._sum is None:
            self._sum, self._entropy = s, ent
        else:
            assert self._entropy is not None  # set together with _sum
            self._sum = self._sum + s.to(self._sum.device)
            self._entropy = self._entropy + ent.to(self._entropy.device)
        self.n += int(g.shape[1])

    def result(self) -> dict[str, dict[str, Any]]:
        """Utilisation per task (JSON-ready).

        Returns
        -------
        dict
            Task -> ``{"mean": [mean gate weight per expert], "entropy": entropy of that mean
            distribution [nats], "normalised_entropy": entropy / ln(n_experts) (1 = uniform
            use, 0 = one expert; 1 when there is a single expert), "sample_entropy": mean
            per-sample gate entropy [nats], "max_share": largest mean weight, "n": samples}``.

        Raises
        ------
        ValueError
            If no sample has been accumulated.
        """
        if self._sum is None or self._entropy is None or self.n == 0:
            raise InputError("GateStats has no samples; call update(gates) first.")
        mean = (self._sum / self.n).cpu().numpy()
        sample_entropy = (self._entropy / self.n).cpu().numpy()
        n_experts = mean.shape[1]
        out = {}
        for i, t in enumerate(self.tasks):
            m = mean[i]
            h = float(-np.sum(m[m > 0] * np.log(m[m > 0])))
            out[t] = {
                "mean": [float(v) for v in m],
                "entropy": h,
                "normalised_entropy": h / math.log(n_experts) if n_experts > 1 else 1.0,
                "sample_entropy": float(sample_entropy[i]),
                "max_share": float(m.max()),
                "n": self.n,
            }
        return out


def gate_utilisation(gates: torch.Tensor | np.ndarray, tasks: tuple[str, ...] | list[str]
                     ) -> dict[str, dict[str, Any]]:
    """Expert utilisation of one gate tensor ``(len(tasks), n, n_experts)``.

    Same record as :meth:`GateStats.result`.
    """
    stats = GateStats(tasks)
    stats.update(gates)
    return stats.result()


@register_architecture("moe", config=MoEConfig,
                       description="multi-gate mixture of experts: shared experts, one gate and "
                                   "tower per task")
def _build_moe(meta: dict) -> nn.Module:
    spec = FeatureSpec.from_dict(meta["features"])
    return MMoE(spec.n_features, tuple(meta["tasks"]), MoEConfig.from_dict(meta["net"]),
                embed_column=spec.embed_column)
