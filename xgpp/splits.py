"""Cross-validation splits of eddy-covariance sites: by site, by IGBP class, by buffered block.

Every splitter is a frozen dataclass with ``folds(sites) -> list[Fold]``, deterministic by its
``seed``, and round-trips through ``to_dict``/``from_dict`` so a model bundle records the split
it was trained under.  A :class:`Fold` is plain data: the site ids used for training, those held
out for testing, and those excluded (spatial buffer).  No site ever appears in two of those.

``sites`` may be the twin world's ``sites`` dataset (``gpp`` on ``(site, time)`` with ``lat``,
``lon``, ``igbp`` coordinates), the output of :func:`xgpp.samples.site_samples` (one row per
sample with ``site``, ``lat``, ``lon``, ``igbp_code`` coordinates) or a ``pandas.DataFrame``
indexed by site with ``lat``, ``lon`` and ``igbp`` columns.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import xarray as xr

from xgpp._strings import as_str
from xgpp.errors import InputError, UnknownOptionError

__all__ = [
    "Fold",
    "split_parts",
    "LeaveIGBPOut",
    "SiteKFold",
    "SpatialBlocks",
    "parse_split",
    "site_table",
]


@dataclass(frozen=True)
class Fold:
    """One train/test partition of sites.

    Attributes
    ----------
    name : str
        Human-readable label, e.g. ``"site-kfold 2/5"`` or ``"igbp ENF"``.
    train : tuple of str
        Site ids used for training (and, inside training, for validation).
    test : tuple of str
        Site ids held out for testing.
    excluded : tuple of str
        Site ids used for neither (inside a spatial buffer around the test blocks).
    """

    name: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    excluded: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        overlap = (set(self.train) & set(self.test)) | (set(self.train) & set(self.excluded))
        if overlap:
            raise InputError(
                f"fold {self.name!r} leaks sites {sorted(overlap)[:5]} between train and "
                "test/excluded: a site must belong to exactly one of them."
            )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {"name": self.name, "train": list(self.train), "test": list(self.test),
                "excluded": list(self.excluded)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Fold:
        """Inverse of :meth:`to_dict`."""
        return cls(name=str(d["name"]), train=tuple(d["train"]), test=tuple(d["test"]),
                   excluded=tuple(d.get("excluded", ())))


def site_table(sites: xr.Dataset | pd.DataFrame) -> pd.DataFrame:
    """One row per site with ``lat`` [degree_north], ``lon`` [degree_east] and ``igbp`` (code).

    Parameters
    ----------
    sites : xarray.Dataset or pandas.DataFrame
        Site dataset (``site`` dimension), sample dataset (``sample`` dimension with a ``site``
        coordinate) or a table indexed by site.

    Returns
    -------
    pandas.DataFrame
        Indexed by site id (str), sorted, with columns ``lat``, ``lon``, ``igbp``.
    """
    if isinstance(sites, pd.DataFrame):
        table = sites
    elif "site" in sites.dims:
        igbp = sites["igbp"] if "igbp" in sites.coords else sites.get("igbp_code")
        table = pd.DataFrame({
            "lat": np.asarray(sites["lat"].values, float),
            "lon": np.asarray(sites["lon"].values, float),
            "igbp": as_str(igbp.values) if igbp is not None else "UNK",
        }, index=as_str(sites["site"].values))
    elif "sample" in sites.dims and "site" in sites.coords:
        code = "igbp_code" if "igbp_code" in sites.coords else "igbp"
        table = pd.DataFrame({
            "site": as_str(sites["site"].values),
            "lat": np.asarray(sites["lat"].values, float),
            "lon": np.asarray(sites["lon"].values, float),
            "igbp": as_str(sites[code].values),
        }).drop_duplicates("site").set_index("site")
    else:
        raise InputError(
            "cannot read sites: expected a dataset with a 'site' dimension (the twin world's "
            "sites), a sample dataset with a 'site' coordinate (xgpp.samples.site_samples) or "
            f"a DataFrame indexed by site; got dims {dict(sites.sizes)}."
        )
    missing = {"lat", "lon", "igbp"} - set(table.columns)
    if missing:
        raise InputError(f"site table lacks column(s) {sorted(missing)}; it has "
                         f"{sorted(table.columns)}.")
    table = table[["lat", "lon", "igbp"]].copy()
    table.index = table.index.astype(str)
    return table.sort_index()


class _Splitter:
    kind: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict including the splitter ``kind``."""
        return {"kind": self.kind, **asdict(self)}  # type: ignore[call-overload]

    @staticmethod
    def from_dict(d: dict[str, Any]) -> SiteKFold | LeaveIGBPOut | SpatialBlocks:
        """Build the splitter named by ``d["kind"]``."""
        d = dict(d)
        kind = d.pop("kind", None)
        if kind not in _SPLITTERS:
            raise InputError(f"unknown split kind {kind!r}; known: {sorted(_SPLITTERS)}.")
        cls = _SPLITTERS[kind]
        known = {f.name for f in fields(cls)}
        if set(d) - known:
            raise UnknownOptionError(f"unknown {cls.__name__} field(s) {sorted(set(d) - known)}; "
                                     f"known: {sorted(known)}.")
        return cls(**d)


@dataclass(frozen=True)
class SiteKFold(_Splitter):
    """Leave-site-out k-fold: sites shuffled by ``seed`` and dealt into ``k`` test groups.

    Attributes
    ----------
    k : int
        Number of folds (2 <= k <= number of sites).
    seed : int
        Seed of the shuffle.
    """

    kind: ClassVar[str] = "site-kfold"
    k: int = 5
    seed: int = 0

    def folds(self, sites: xr.Dataset | pd.DataFrame) -> list[Fold]:
        """Return the ``k`` folds; every site is tested exactly once."""
        ids = site_table(sites).index.to_numpy()
        if not 2 <= self.k <= len(ids):
            raise InputError(f"SiteKFold needs 2 <= k <= number of sites; got k={self.k} with "
                             f"{len(ids)} sites. Lower k or add sites.")
        order = np.random.default_rng(self.seed).permutation(len(ids))
        groups = np.array_split(ids[order], self.k)
        out = []
        for i, test in enumerate(groups):
            test_set = set(test)
            out.append(Fold(f"site-kfold {i + 1}/{self.k}",
                            train=tuple(sorted(s for s in ids if s not in test_set)),
                            test=tuple(sorted(test_set))))
        return out


@dataclass(frozen=True)
class LeaveIGBPOut(_Splitter):
    """Leave-one-IGBP-class-out: one fold per class present, its sites all tested together.

    Attributes
    ----------
    min_sites : int
        Classes with fewer sites than this are not made into folds (their sites stay in
        training in every fold).
    """

    kind: ClassVar[str] = "igbp"
    min_sites: int = 1

    def folds(self, sites: xr.Dataset | pd.DataFrame) -> list[Fold]:
        """Return one fold per IGBP class (sorted by code)."""
        table = site_table(sites)
        counts = table["igbp"].value_counts()
        classes = sorted(c for c, n in counts.items() if n >= self.min_sites)
        if len(counts) < 2:
            raise InputError(f"leave-IGBP-out needs sites of at least 2 classes; all sites are "
                             f"{list(counts.index)}.")
        out = []
        for code in classes:
            test = table.index[table["igbp"] == code]
            train = table.index[table["igbp"] != code]
            out.append(Fold(f"igbp {code}", train=tuple(train), test=tuple(test)))
        return out


@dataclass(frozen=True)
class SpatialBlocks(_Splitter):
    """Buffered spatial-block k-fold.

    The globe is tiled into ``block`` x ``block`` degree blocks from (-90, -180); the blocks
    holding sites are shuffled by ``seed`` and dealt into ``k`` folds.  A fold tests the sites
    in its blocks; training sites within ``buffer`` degrees (in latitude or longitude) of a
    test block's edges are excluded so near neighbours cannot leak information.

    Attributes
    ----------
    block : float
        Block edge [degree].
    buffer : float
        Exclusion buffer around each test block [degree]; 0 for none.
    k : int
        Number of folds.
    seed : int
        Seed of the block shuffle.
    """

    kind: ClassVar[str] = "blocks"
    block: float = 10.0
    buffer: float = 0.0
    k: int = 5
    seed: int = 0

    def folds(self, sites: xr.Dataset | pd.DataFrame) -> list[Fold]:
        """Return the ``k`` folds (each block tested exactly once)."""
        if not self.block > 0 or self.buffer < 0:
            raise InputError(f"SpatialBlocks needs block > 0 and buffer >= 0 degrees; got "
                             f"block={self.block}, buffer={self.buffer}.")
        table = site_table(sites)
        lat, lon = table["lat"].to_numpy(), ((table["lon"].to_numpy() + 180) % 360) - 180
        by = np.floor((lat + 90) / self.block).astype(int)
        bx = np.floor((lon + 180) / self.block).astype(int)
        block_id = by * 100_000 + bx
        blocks = np.unique(block_id)
        if not 2 <= self.k <= len(blocks):
            raise InputError(
                f"SpatialBlocks needs 2 <= k <= number of occupied blocks; got k={self.k} with "
                f"{len(blocks)} blocks of {self.block} degrees. Use smaller blocks or lower k."
            )
        order = np.random.default_rng(self.seed).permutation(len(blocks))
        groups = np.array_split(blocks[order], self.k)
        ids = table.index.to_numpy()
        out = []
        for i, group in enumerate(groups):
            is_test = np.isin(block_id, group)
            near = np.zeros(len(ids), bool)
            for b in group:
                lat0 = (b // 100_000) * self.block - 90
                lon0 = (b % 100_000) * self.block - 180
                in_lat = (lat >= lat0 - self.buffer) & (lat <= lat0 + self.block + self.buffer)
                centre = lon0 + self.block / 2
                dlon = np.abs(((lon - centre + 180) % 360) - 180)
                in_lon = dlon <= self.block / 2 + self.buffer
                near |= in_lat & in_lon
            excluded = near & ~is_test
            out.append(Fold(f"blocks {i + 1}/{self.k}",
                            train=tuple(ids[~is_test & ~excluded]),
                            test=tuple(ids[is_test]),
                            excluded=tuple(ids[excluded])))
        return out


_SPLITTERS: dict[str, type] = {c.kind: c for c in (SiteKFold, LeaveIGBPOut, SpatialBlocks)}
_ALIASES = {"site": "site-kfold", "sites": "site-kfold", "kfold": "site-kfold",
            "igbp": "igbp", "class": "igbp", "blocks": "blocks", "spatial": "blocks"}


def split_parts(split: str | None) -> tuple[str | None, str | None]:
    """``(site part, tracks part)`` of a split spec such as ``"site-kfold:k=5,fold=0;tracks:k=5"``.

    Parts are separated by ``;``; the one starting with ``tracks`` holds out SIF track
    segments (:func:`xgpp.tracks.parse_track_split`), the other holds out sites.  Either may be
    absent (None); more than one of a kind raises.
    """
    parts = [p.strip() for p in (split or "").split(";") if p.strip()]
    tracks = [p for p in parts if p.startswith("tracks")]
    site = [p for p in parts if not p.startswith("tracks")]
    for kind, found in (("site", site), ("track", tracks)):
        if len(found) > 1:
            raise InputError(f"split={split!r} names {len(found)} {kind} splits ({found}); give "
                             "at most one site split and one 'tracks:...' part, joined by ';'.")
    return (site[0] if site else None), (tracks[0] if tracks else None)


def parse_split(spec: str) -> tuple[SiteKFold | LeaveIGBPOut | SpatialBlocks, int]:
    """Parse a CLI split spec such as ``"site-kfold:k=5,fold=0"`` or ``"blocks:block=10,buffer=2"``.

    Parameters
    ----------
    spec : str
        ``KIND[:key=value,...]`` where KIND is ``site-kfold``, ``igbp`` or ``blocks``; the
        special key ``fold`` (default 0) selects which fold to train.

    Returns
    -------
    splitter : SiteKFold or LeaveIGBPOut or SpatialBlocks
        The splitter the spec names, with its keys.
    fold : int
        Index of the fold to train (the ``fold`` key).
    """
    kind, _, rest = spec.partition(":")
    kind = _ALIASES.get(kind.strip().lower(), kind.strip().lower())
    if kind not in _SPLITTERS:
        raise InputError(f"unknown split {spec!r}; use one of {sorted(_SPLITTERS)}, e.g. "
                         "'site-kfold:k=5,fold=0', 'igbp:fold=2', 'blocks:block=10,buffer=2'.")
    cls = _SPLITTERS[kind]
    types = {f.name: f.type for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    fold = 0
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"split option {item!r} in {spec!r} is not key=value.")
        if key == "fold":
            fold = int(value)
        elif key in types:
            kwargs[key] = float(value) if types[key] in ("float", float) else int(value)
        else:
            raise InputError(f"unknown option {key!r} for split {kind!r}; known: "
                             f"{sorted(types)} and 'fold'.")
    return cls(**kwargs), fold
