"""Forward kernels: batched CPU inference and the overlapped, pinned CUDA path.

Used by :meth:`xgpp.models.TorchModel.predict_numpy` for any registered architecture.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["forward"]


def forward(module: nn.Module, x: np.ndarray, bs: int, n_out: int, precision: str) -> np.ndarray:
    """Normalised outputs ``(n, n_out)`` of ``module`` on rows ``x``, on the module's device."""
    dev = next(module.parameters()).device
    if dev.type == "cuda":
        return _forward_cuda(module, x, bs, n_out, precision)
    return _forward_cpu(module, x, bs, n_out, precision)


def _autocast(device_type: str, precision: str) -> Any:
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=getattr(torch, precision))


def _forward_cpu(module: nn.Module, x: np.ndarray, bs: int, n_out: int,
                 precision: str) -> np.ndarray:
    """Forward pass over ``x`` in batches of ``bs`` rows, results written in place."""
    out = np.empty((x.shape[0], n_out), np.float32)
    with torch.inference_mode(), _autocast("cpu", precision):
        for i in range(0, x.shape[0], bs):
            out[i:i + bs] = module(torch.from_numpy(x[i:i + bs])).float().numpy()
    return out


def _forward_cuda(module: nn.Module, x: np.ndarray, bs: int, n_out: int,
                  precision: str) -> np.ndarray:
    """Forward pass on a GPU with host transfers overlapped with compute.

    The rows are copied once into this thread's page-locked (pinned) staging buffer
    (:func:`_pinned`, reused across calls), so host-to-device copies are asynchronous DMA;
    batch ``i + 1`` is copied on a side stream while batch ``i`` runs on the compute stream,
    and results come back into a pinned buffer without blocking.  Each dask thread has its own
    pair of streams, so chunks of several threads run on the GPU concurrently and each waits
    only for its own work: one synchronisation per call.
    """
    dev = next(module.parameters()).device
    n = x.shape[0]
    src = _pinned("src", x.shape).copy_(torch.from_numpy(x))
    res = _pinned("res", (n, n_out))
    compute, side = _streams(dev)

    def upload(i: int) -> tuple[torch.Tensor, torch.cuda.Event]:
        with torch.cuda.stream(side):
            xb = src[i:i + bs].to(dev, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(side)
        return xb, ready

    with torch.inference_mode(), _autocast("cuda", precision), torch.cuda.stream(compute):
        nxt = upload(0) if n else None
        for i in range(0, n, bs):
            assert nxt is not None  # uploaded before the loop (n > 0) or by the last step
            xb, ready = nxt
            compute.wait_event(ready)
            xb.record_stream(compute)  # xb was allocated on the side stream
            if i + bs < n:
                nxt = upload(i + bs)
            res[i:i + bs].copy_(module(xb).float(), non_blocking=True)
    compute.synchronize()
    return res.numpy().copy()  # the staging buffer is reused by this thread's next call


_STAGING = threading.local()


def _streams(dev: torch.device) -> tuple[torch.cuda.Stream, torch.cuda.Stream]:
    """Return the calling thread's (compute, copy) CUDA streams on ``dev``."""
    key = f"streams_{dev}"
    pair = getattr(_STAGING, key, None)
    if pair is None:
        pair = (torch.cuda.Stream(dev), torch.cuda.Stream(dev))
        setattr(_STAGING, key, pair)
    return pair


def _pinned(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Return the calling thread's page-locked float32 buffer ``name``, viewed as ``shape``.

    Allocating pinned memory (``cudaHostAlloc``) costs far more than copying into it and
    serialises threads in the driver; each dask thread keeps its buffers and grows them only
    when a larger chunk arrives.
    """
    size = int(np.prod(shape))
    buf = getattr(_STAGING, name, None)
    if buf is None or buf.numel() < size:
        buf = torch.empty(max(size, 1), dtype=torch.float32, pin_memory=True)
        setattr(_STAGING, name, buf)
    return buf[:size].view(shape)
