"""Deterministic random fields that any chunk can evaluate on its own.

Two kinds, both pure functions of (seed, stream, coordinates), so a sub-region generated alone
equals the same slice of the whole world, and chunks are generated independently:

* :func:`white_normal` -- i.i.d. N(0, 1) keyed by integer indices through a counter-based hash
  (SplitMix64), like Philox/Random123 but vectorised in numpy.
* :class:`SmoothField` -- spatially correlated Gaussian fields on the sphere built from random
  Fourier features (Rahimi & Recht 2007), with amplitudes that may vary per time step.
"""

from __future__ import annotations

import zlib

import numpy as np

__all__ = ["SmoothField", "stream_id", "unit_vectors", "white_normal", "white_uniform"]

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


def stream_id(name: str) -> int:
    """Stable integer id of a named random stream (CRC32 of its name)."""
    return zlib.crc32(name.encode())


def _splitmix(x: np.ndarray) -> np.ndarray:
    x = x + _GOLD
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def white_uniform(seed: int, stream: str, *keys: np.ndarray) -> np.ndarray:
    """Uniform(0, 1) numbers keyed by ``(seed, stream, *keys)``; keys broadcast together."""
    with np.errstate(over="ignore"):
        h = np.full((), (seed * 1_000_003 + stream_id(stream)) & 0xFFFFFFFFFFFFFFFF, np.uint64)
        h = _splitmix(h)
        for k in np.broadcast_arrays(*[np.asarray(k, dtype=np.int64) for k in keys]):
            h = _splitmix(h ^ k.astype(np.uint64))
    # 53 random bits -> (0, 1)
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def white_normal(seed: int, stream: str, *keys: np.ndarray) -> np.ndarray:
    """Standard normal numbers keyed by ``(seed, stream, *keys)`` (Box-Muller)."""
    u1 = white_uniform(seed, stream + ":u1", *keys)
    u2 = white_uniform(seed, stream + ":u2", *keys)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def unit_vectors(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Cartesian unit vectors, shape ``(3, n)``, of points at ``lat``/``lon`` [degree]."""
    la, lo = np.deg2rad(np.ravel(lat)), np.deg2rad(np.ravel(lon))
    return np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)])


class SmoothField:
    """A zero-mean, unit-variance Gaussian random field on the sphere.

    Parameters
    ----------
    seed : int
        World seed.
    stream : str
        Name of this field; different names give independent fields.
    length_km : float
        Correlation length [km] (wave numbers ~ Earth radius / length).
    n_modes : int
        Number of random Fourier features; more modes give a more Gaussian field.
    """

    def __init__(self, seed: int, stream: str, length_km: float, n_modes: int = 48) -> None:
        rng = np.random.default_rng([seed, stream_id(stream)])
        k = 6371.0 / float(length_km)
        self.waves = rng.normal(0.0, k, size=(n_modes, 3))
        self.phases = rng.uniform(0.0, 2.0 * np.pi, size=n_modes)
        self.seed, self.stream, self.n_modes = seed, stream, n_modes

    def basis(self, xyz: np.ndarray) -> np.ndarray:
        """Feature matrix, shape ``(n_modes, n_points)``, for unit vectors ``xyz``."""
        return np.sqrt(2.0 / self.n_modes) * np.cos(self.waves @ xyz + self.phases[:, None])

    def static(self, xyz: np.ndarray) -> np.ndarray:
        """The time-invariant field at ``xyz``: one fixed set of unit-normal amplitudes."""
        amp = np.random.default_rng([self.seed, stream_id(self.stream), 1]).normal(size=self.n_modes)
        return amp @ self.basis(xyz)

    def varying(self, xyz: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """A field that is independent for each integer key (e.g. a day number or a year).

        Returns shape ``(len(keys), n_points)``.  Amplitudes come from the counter-based hash,
        so any subset of keys gives the same rows as the full set.
        """
        keys = np.asarray(keys, dtype=np.int64)
        amp = white_normal(self.seed, self.stream + ":amp", keys[:, None],
                           np.arange(self.n_modes)[None, :])
        return amp @ self.basis(xyz)
