"""The phase loop every method trains with.

A phase takes batches as dicts of numpy arrays (``"x"`` plus any targets and masks), a
``forward(net, batch) -> pred`` (a tensor, or a dict of tensors) and a
``loss(pred, batch) -> (total, parts)`` returning the scalar to minimise and its named parts.
Each epoch it logs the total and every part (training and validation), optional monitors
(e.g. the MoE's expert utilisation), stops early on the validation total, writes a checkpoint
and resumes from it after an interruption.
"""

from __future__ import annotations

import copy
import math
import zlib
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np
import torch

from xgpp.errors import DeviceError, InputError
from xgpp.predict import resolve_device as _resolve_auto
from xgpp.train.checkpoints import Checkpoints, _restore_optimizer
from xgpp.train.config import PhaseConfig

__all__ = ["Batch", "LossFn", "Monitor", "Progress", "array_batches", "resolve_device",
           "run_phase"]

#: one batch: ``"x"`` (n, n_features) float32 and any targets/masks with n rows
Batch = dict[str, np.ndarray]
#: ``loss(pred, batch) -> (total, {part: value})`` on tensors
LossFn = Callable[[Any, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, torch.Tensor]]]
#: ``forward(net, batch) -> pred``
ForwardFn = Callable[[torch.nn.Module, dict[str, torch.Tensor]], Any]

#: rows per forward pass when evaluating validation sets
EVAL_ROWS = 65_536


class Monitor(Protocol):
    """Something observed on every training batch and recorded per epoch (e.g. gate use)."""

    def reset(self) -> None:
        """Start a new epoch."""

    def update(self, pred: Any, batch: dict[str, torch.Tensor]) -> None:
        """Observe one training batch."""

    def result(self) -> Any:
        """JSON-ready record of the epoch."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; anything else as given (checked)."""
    dev = torch.device(_resolve_auto(str(device)))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device={device!r} asked for CUDA, but torch sees no GPU "
                           f"(torch {torch.__version__}). Use device='cpu' or 'auto'.")
    return dev


class Progress:
    """A rich progress bar with losses (or nothing)."""

    def __init__(self, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
                                TimeElapsedColumn(), console=Console(stderr=True))

    def __enter__(self) -> Progress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()

    def task(self, name: str, total: int) -> Any:
        """Add a bar for ``total`` steps (None when disabled)."""
        if self.bar is None:
            return None
        return self.bar.add_task(name, total=total, loss="")

    def update(self, task: Any, *, completed: int, text: str) -> None:
        """Advance a bar and show ``text`` (the losses)."""
        if self.bar is not None and task is not None:
            self.bar.update(task, completed=completed, loss=text)


def phase_seed(seed: int, phase: str, epoch: int) -> int:
    """Seed of ``phase``'s epoch ``epoch`` (dropout, any torch randomness in the step)."""
    return (int(seed) * 1_000_003 + zlib.crc32(phase.encode()) * 101 + int(epoch)) % (2**63)


def array_batches(x: np.ndarray, y: np.ndarray, batch_size: int, rng: np.random.Generator
                  ) -> Iterator[Batch]:
    """Shuffled ``{"x", "y"}`` batches of in-memory rows."""
    order = rng.permutation(len(x))
    for i in range(0, len(x), batch_size):
        idx = order[i:i + batch_size]
        yield {"x": x[idx], "y": y[idx]}


def default_forward(net: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``net(batch["x"])``."""
    return net(batch["x"])


def _to_device(batch: Batch, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device, non_blocking=True)
            for k, v in batch.items()}


def _cat(preds: list[Any]) -> Any:
    if isinstance(preds[0], dict):
        return {k: torch.cat([p[k] for p in preds]) for k in preds[0]}
    return torch.cat(preds)


def evaluate(net: torch.nn.Module, data: Batch, loss: LossFn, device: torch.device, *,
             forward: ForwardFn = default_forward) -> tuple[float, dict[str, float]]:
    """Validation loss and its parts over all rows of ``data`` (forward in slices)."""
    net.eval()
    n = len(data["x"])
    with torch.inference_mode():
        preds = [forward(net, _to_device({k: v[i:i + EVAL_ROWS] for k, v in data.items()},
                                         device)) for i in range(0, n, EVAL_ROWS)]
        total, parts = loss(_cat(preds), _to_device(data, device))
    return float(total), {k: float(v) for k, v in parts.items()}


def run_phase(phase: str, net: torch.nn.Module, *, batches: Callable[[int], Iterator[Batch]],
              val: Batch | None, loss: LossFn, pc: PhaseConfig, ckpt: Checkpoints, seed: int,
              device: torch.device, bar: Progress,
              on_epoch_end: Callable[[dict], Any] | None = None,
              params: list[torch.nn.Parameter] | None = None,
              forward: ForwardFn = default_forward, val_loss: LossFn | None = None,
              monitors: dict[str, Monitor] | None = None) -> list[dict[str, Any]]:
    """Train ``net`` for one phase with early stopping, checkpointing every epoch.

    Parameters
    ----------
    phase : str
        Name (checkpoint file, history key, progress bar).
    net : torch.nn.Module
    batches : callable
        ``batches(epoch)`` yields the epoch's training batches (dicts of arrays with ``"x"``).
    val : dict of arrays, optional
        Validation rows in the same format; None uses the training loss for early stopping.
    loss : callable
        ``loss(pred, batch) -> (total, parts)`` minimised on training batches.
    pc : PhaseConfig
        Epochs, learning rate, patience, weight decay.
    params : list of Parameter, optional
        Parameters that train (default: all with ``requires_grad``).
    forward : callable
        ``forward(net, batch) -> pred``.
    val_loss : callable, optional
        Loss on the validation rows (default ``loss``).
    monitors : dict, optional
        Name -> :class:`Monitor`, updated on every training batch and recorded per epoch.

    Returns
    -------
    list of dict
        One record per epoch: ``phase``, ``epoch``, ``train_loss``, ``val_loss``, ``samples``,
        ``parts`` and ``val_parts`` (each named loss term) and one key per monitor.
    """
    params = [p for p in net.parameters() if p.requires_grad] if params is None else params
    val_loss = val_loss or loss
    monitors = monitors or {}
    opt = torch.optim.AdamW(params, lr=pc.lr, weight_decay=pc.weight_decay)
    start, best, bad, history = 0, math.inf, 0, []
    best_state = copy.deepcopy(net.state_dict())
    saved = ckpt.load(phase)
    if saved is not None:
        if saved["done"]:
            net.load_state_dict(saved["best"])
            return saved["history"]
        net.load_state_dict(saved["model"])
        _restore_optimizer(opt, saved)
        start, best, bad = saved["epoch"], saved["best_loss"], saved["bad_epochs"]
        history, best_state = saved["history"], saved["best"]
    task = bar.task(phase, pc.max_epochs)
    for epoch in range(start, pc.max_epochs):
        torch.manual_seed(phase_seed(seed, phase, epoch))
        net.train()
        for m in monitors.values():
            m.reset()
        total = torch.zeros((), device=device)
        part_sums: dict[str, torch.Tensor] = {}
        n = 0
        for batch in batches(epoch):
            bt = _to_device(batch, device)
            rows = len(batch["x"])
            opt.zero_grad(set_to_none=True)
            pred = forward(net, bt)
            value, parts = loss(pred, bt)
            value.backward()
            opt.step()
            total += value.detach() * rows
            for k, v in parts.items():
                part_sums[k] = part_sums.get(k, 0.0) + v.detach() * rows
            for m in monitors.values():
                m.update(pred, bt)
            n += rows
        if n == 0:
            raise InputError(f"phase {phase!r} got no training samples in epoch {epoch}; "
                             "check that the cubes overlap and hold valid pixels.")
        train_loss = float(total) / n
        if val is not None:
            val_total, val_parts = evaluate(net, val, val_loss, device, forward=forward)
        else:
            val_total, val_parts = train_loss, {}
        if val_total < best:
            best, bad = val_total, 0
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            bad += 1
        record = {"phase": phase, "epoch": epoch + 1, "train_loss": train_loss,
                  "val_loss": val_total if val is not None else None, "samples": n,
                  "parts": {k: float(v) / n for k, v in part_sums.items()},
                  "val_parts": val_parts,
                  **{name: m.result() for name, m in monitors.items()}}
        history.append(record)
        done = bad >= pc.patience or epoch + 1 >= pc.max_epochs
        if done:
            net.load_state_dict(best_state)
        ckpt.save(phase, net, opt, best_state,
                  {"phase": phase, "epoch": epoch + 1, "best_loss": best, "bad_epochs": bad,
                   "history": history, "done": done})
        text = f"train {train_loss:.4f}" + (f" val {val_total:.4f}" if val is not None else "")
        if len(record["parts"]) > 1:
            text += " (" + " ".join(f"{k} {v:.3f}" for k, v in record["parts"].items()) + ")"
        bar.update(task, completed=epoch + 1, text=text)
        if on_epoch_end is not None:
            on_epoch_end(dict(record))
        if done:
            break
    net.load_state_dict(best_state)
    return history
