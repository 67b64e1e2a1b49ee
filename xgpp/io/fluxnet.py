"""FLUXNET2015 / ONEFlux / AmeriFlux-FLUXNET site CSVs into one ``(site, time)`` Dataset.

Files are read one at a time, only the needed columns (``usecols``), converted to canonical
units, QC-filtered and aggregated to the cube's time step immediately, so the archive is never
held in memory.  Column conventions follow the FLUXNET2015 data-variable documentation
(fluxnet.org/data/fluxnet2015-dataset/fullset-data-product/).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from xgpp.errors import CorruptChunkError, InputError, NotFoundError
from xgpp.io._paths import PathsLike, basename, expand_paths, open_binary
from xgpp.io._ranges import screen
from xgpp.io._time import check_freq, step_days, step_range, step_start
from xgpp.io._units import to_canonical
from xgpp.landcover import IGBP_CODES
from xgpp.variables import attrs_for, get_variable

__all__ = ["read_fluxnet", "parse_fluxnet_name", "SW_TO_PPFD", "COLUMNS"]

log = logging.getLogger("xgpp.io")

#: Shortwave to PPFD [umol J-1]: PAR is about 45-50 % of global shortwave and 1 J of PAR is about
#: 4.57 umol photons (McCree 1972); 2.04 is the factor of Meek et al. (1984, Agron. J. 76:939),
#: as used to drive the P-model from SW_IN (Stocker et al. 2020, GMD 13:1545).
SW_TO_PPFD = 2.04

#: canonical name -> (FLUXNET column, units of that column).  ``gpp`` is set per call.
COLUMNS: dict[str, tuple[str, str]] = {
    "tair": ("TA_F", "degC"),
    "vpd": ("VPD_F", "hPa"),
    "ppfd": ("SW_IN_F", "W m-2"),
    "patm": ("PA_F", "kPa"),
    "co2": ("CO2_F_MDS", "umol mol-1"),
}
_QC = "NEE_VUT_REF_QC"
_NAME = re.compile(
    r"^(?P<network>[A-Z]+)_(?P<site>[A-Z]{2}-[A-Za-z0-9]{3})_FLUXNET(?:2015)?_"
    r"(?P<set>FULLSET|SUBSET|ERAI|AUXMETEO|AUXNEE)_(?P<res>HH|HR|DD|WW|MM|YY)_"
)
#: sub-steps per day for sub-daily files; DD/WW/MM handled by their period length
_PER_DAY = {"HH": 48.0, "HR": 24.0, "DD": 1.0}
_TS_FORMAT = {"HH": "%Y%m%d%H%M", "HR": "%Y%m%d%H%M", "DD": "%Y%m%d", "WW": "%Y%m%d",
              "MM": "%Y%m"}


@dataclass(frozen=True)
class _Name:
    site: str
    res: str
    product: str


def parse_fluxnet_name(url: str) -> _Name:
    """Site id, resolution and product set from a FLUXNET file name.

    ``FLX_US-Ha1_FLUXNET2015_FULLSET_DD_1991-2012_1-4.csv`` -> site ``US-Ha1``, res ``DD``.
    """
    name = basename(url)
    m = _NAME.match(name)
    if not m:
        raise InputError(
            f"{name!r} is not a FLUXNET file name: expected "
            "'<NET>_<CC-Sss>_FLUXNET[2015]_<FULLSET|SUBSET>_<HH|HR|DD|WW|MM>_...csv', e.g. "
            "'FLX_US-Ha1_FLUXNET2015_FULLSET_DD_1991-2012_1-4.csv'. Rename the file or pass only "
            "FLUXNET CSVs."
        )
    if m["res"] == "YY":
        raise InputError(f"{name}: yearly (YY) files are coarser than any xgpp time step; pass "
                         "HH, HR, DD, WW or MM files.")
    return _Name(site=m["site"], res=m["res"], product=m["set"])


def _load_sites(sites) -> pd.DataFrame:
    if isinstance(sites, pd.DataFrame):
        df = sites.copy()
    else:
        with open_binary(str(sites)) as f:
            df = pd.read_csv(f)
    need = ["SITE_ID", "LOCATION_LAT", "LOCATION_LONG", "IGBP"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise NotFoundError(f"site table lacks column(s) {missing}; FLUXNET site lists have {need}; "
                       f"found {list(df.columns)}.")
    df = df.drop_duplicates("SITE_ID").set_index("SITE_ID")
    bad = sorted(set(df["IGBP"].astype(str).str.strip()) - set(IGBP_CODES))
    if bad:
        raise InputError(f"site table has unknown IGBP code(s) {bad}; expected one of "
                         f"{list(IGBP_CODES)}.")
    return df


def _read_file(url: str, info: _Name, columns: dict[str, tuple[str, str]], qc_threshold: float,
               ) -> tuple[pd.DataFrame, dict[str, int], dict[str, dict[str, object]],
                          dict[str, dict[str, int]]]:
    """One file -> DataFrame indexed by period start; GPP counts; missing columns; drops.

    The fourth item counts dropped values per variable (``{name: {"missing", "unreadable",
    "implausible"}}``).  Rows are sorted by time.  Cells that are not numbers (binary garbage, stray text) and
    values outside the variable's possible range (:mod:`xgpp.io._ranges`) are NaN and counted;
    a column whose median is implausible (a unit mistake) raises
    :class:`~xgpp.errors.UnitError`.

    A driver whose column the file lacks is NaN for the whole file; it is returned in the third
    item (canonical name -> ``{"column", "file", "n_values"}``, ``n_values`` the file rows set
    to NaN) and logged as a warning.  A missing GPP, QC or timestamp column is an error.
    """
    ts_cols = ["TIMESTAMP"] if info.res in ("DD", "MM") else ["TIMESTAMP_START"]
    gpp_col = columns["gpp"][0]
    with open_binary(url) as f:
        header = [str(c) for c in _csv(url, f, nrows=0).columns]
        if gpp_col not in header:
            found_gpp = [c for c in header if c.upper().startswith("GPP")]
            raise NotFoundError(
                f"{basename(url)} (site {info.site}) has no GPP column {gpp_col!r} (looked for "
                f"gpp_variable={gpp_col!r}); GPP columns found: {found_gpp or 'none'}; all "
                f"columns found: {header}. Pass gpp_variable= one of the GPP columns found "
                "(e.g. 'GPP_DT_VUT_REF'), or remove the file: without GPP a site cannot be used."
            )
        required = [c for c in dict.fromkeys(ts_cols + [_QC]) if c not in header]
        if required:
            raise NotFoundError(
                f"{basename(url)} (site {info.site}) lacks column(s) {required}; columns found: "
                f"{header}. FLUXNET {info.product} {info.res} files carry the timestamp "
                f"{ts_cols[0]} and the GPP quality flag {_QC} (FLUXNET2015 variable list); "
                "fix or remove the file."
            )
        absent = {name: col for name, (col, _) in columns.items() if col not in header}
        want = ts_cols + [c for name, (c, _) in columns.items() if name not in absent] + [_QC]
        f.seek(0)
        df = _csv(url, f, usecols=list(dict.fromkeys(want)), dtype={c: str for c in ts_cols})
    missing_cols: dict[str, dict[str, object]] = {}
    for name, col in absent.items():
        missing_cols[name] = {"column": col, "file": basename(url), "n_values": int(len(df))}
        log.warning("%s: site %s lacks driver column %s (%s); %s is NaN for its %d values. "
                    "Other sites and GPP are read as usual; pass drivers= without %r to skip "
                    "this driver.", basename(url), info.site, col, name, name, len(df), name)
    t = _timestamps(df[ts_cols[0]], info, url)
    counts = {"values": 0, "missing": 0, "qc": 0}
    dropped: dict[str, dict[str, int]] = {}
    out = {}
    qc = pd.to_numeric(df[_QC], errors="coerce").to_numpy(float, copy=True)
    qc[qc <= -9999] = np.nan
    for name, (col, units) in columns.items():
        if name in absent:
            out[name] = np.full(len(df), np.nan)
            continue
        where = f"{basename(url)} (site {info.site}) column {col}"
        v, unreadable = _numbers(df[col])
        missing_v = (~np.isfinite(v) | (v <= -9999)) & ~unreadable
        v[missing_v | unreadable] = np.nan
        if name == "gpp":
            if not np.isfinite(v).any():
                raise InputError(f"{basename(url)}: site {info.site} has no valid {col} value "
                                 "(all -9999 or empty); remove the file or pick another "
                                 "gpp_variable.")
            counts["values"] = int(v.size)
            counts["missing"] = int(missing_v.sum())
            bad = (qc > qc_threshold) if info.res in ("HH", "HR") else (qc < qc_threshold)
            bad = (bad | ~np.isfinite(qc)) & np.isfinite(v)
            counts["qc"] = int(bad.sum())
            v[bad] = np.nan
        if name == "ppfd":
            v, units = v * SW_TO_PPFD, "umol m-2 s-1"
        v = to_canonical(v, units, name, where=where)
        impossible = screen(v, name, where=where, units=units)
        v[impossible] = np.nan
        dropped[name] = {"missing": int(missing_v.sum()), "unreadable": int(unreadable.sum()),
                         "implausible": int(impossible.sum())}
        if unreadable.any() or impossible.any():
            log.warning("%s: %d value(s) are not numbers and %d lie outside the possible range "
                        "%s %s; they are dropped (NaN) and counted in the %s attributes "
                        "n_dropped_unreadable/n_dropped_implausible.", where,
                        int(unreadable.sum()), int(impossible.sum()),
                        get_variable(name).limits, get_variable(name).units, name)
        out[name] = v
    return pd.DataFrame(out, index=t).sort_index(), counts, missing_cols, dropped


def _csv(url: str, f, **kwargs) -> pd.DataFrame:
    """``pandas.read_csv`` whose failures on damaged files name the file."""
    try:
        return pd.read_csv(f, **kwargs)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise CorruptChunkError(
            f"{basename(url)} cannot be read as a FLUXNET CSV ({type(err).__name__}: {err}); "
            "expected comma-separated text with a header row (TIMESTAMP..., TA_F, GPP_...). "
            "The file is damaged or not a CSV; re-download it."
        ) from err


def _numbers(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Floats of a column, and where its non-empty cells are not numbers (unreadable)."""
    v = pd.to_numeric(col, errors="coerce").to_numpy(float, copy=True)
    if col.dtype.kind in "fiub":
        return v, np.zeros(v.size, dtype=bool)
    text = col.astype(str).str.strip()
    unreadable = np.isnan(v) & col.notna().to_numpy() & (text != "").to_numpy()
    return v, unreadable


def _timestamps(col: pd.Series, info: _Name, url: str) -> pd.DatetimeIndex:
    """Period starts of a file's rows: all present, parseable and distinct."""
    fmt = _TS_FORMAT[info.res]
    text = col.astype("string").str.strip()
    t = pd.to_datetime(text, format=fmt, errors="coerce")
    bad = t.isna().to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raise InputError(
            f"{basename(url)} (site {info.site}): column {col.name} must hold {fmt} times for "
            f"{info.res} files; row {row + 2} holds {text.iloc[row]!r} ({int(bad.sum())} bad "
            "value(s)). Fix or re-download the file."
        )
    idx = pd.DatetimeIndex(t)
    dup = idx[idx.duplicated()]
    if len(dup):
        raise InputError(f"{basename(url)} (site {info.site}) has duplicated timestamp "
                         f"{dup[0]} ({len(dup)} duplicates); each period must appear once.")
    if not idx.is_monotonic_increasing:
        log.info("%s: rows are not in time order; they are read sorted by %s", basename(url),
                 col.name)
    return idx


def _aggregate(df: pd.DataFrame, res: str, freq: str, min_coverage: float,
               ) -> tuple[pd.DataFrame, int]:
    """Means per step, masked where the fraction of valid sub-steps is below ``min_coverage``."""
    if res in ("WW", "MM") and freq != "MS":
        raise InputError(f"{res} files cannot be aggregated to freq={freq!r}: xgpp never "
                         "disaggregates; use daily (DD) or sub-daily files, or freq='MS'.")
    labels = step_start(df.index, freq)
    g = df.groupby(labels)
    mean, count = g.mean(), g.count()
    starts = pd.DatetimeIndex(mean.index)
    if res == "MM":
        expected = np.ones(len(starts))
    elif res == "WW":
        expected = step_days(starts, freq) / 7.0
    else:
        expected = step_days(starts, freq) * _PER_DAY[res]
    coverage = count.to_numpy(float) / expected[:, None]
    low = coverage < min_coverage
    dropped = int((low & mean.notna().to_numpy())[:, list(df.columns).index("gpp")].sum())
    return mean.mask(low), dropped


def read_fluxnet(paths: PathsLike, *, sites: str | pd.DataFrame | None = None,
                 gpp_variable: str = "GPP_NT_VUT_REF", freq: str = "8D",
                 min_coverage: float = 0.5, qc_threshold: float | None = None,
                 drivers: Sequence[str] = ("tair", "vpd", "ppfd", "patm", "co2")) -> xr.Dataset:
    """Read FLUXNET site CSVs into one ``(site, time)`` Dataset on the cube's time step.

    Parameters
    ----------
    paths : str, os.PathLike or list
        FLUXNET2015/ONEFlux/AmeriFlux-FLUXNET FULLSET or SUBSET CSVs (HH, HR, DD, WW or MM): a
        file, folder, glob or fsspec URL.  One file per site.
    sites : str or pandas.DataFrame, optional
        FLUXNET site list (CSV path/URL or table) with ``SITE_ID``, ``LOCATION_LAT`` [degree_north],
        ``LOCATION_LONG`` [degree_east] and ``IGBP`` (code such as ``"ENF"``).  Every site read
        must be listed.  Without it ``lat``/``lon`` are NaN and ``igbp`` is ``""``.
    gpp_variable : str
        GPP column, e.g. ``"GPP_NT_VUT_REF"`` (night-time partitioning) or ``"GPP_DT_VUT_REF"``;
        recorded in ``ds["gpp"].attrs['source_variable']``.
    freq : {"8D", "D", "MS"}
        Output time step; ``"8D"``: MODIS convention, labels are step starts.
    min_coverage : float
        Minimum fraction [1] of valid sub-steps (half-hours, hours, days, ...) in a step for its
        mean to be kept.
    qc_threshold : float, optional
        ``NEE_VUT_REF_QC`` rule applied to GPP.  HH/HR files: flags 0 measured, 1 good, 2 medium,
        3 poor gap-fill; keep ``QC <= qc_threshold`` (default 1).  DD/WW/MM files: the flag is
        the fraction [1] of measured or good-quality gap-filled data; keep
        ``QC >= qc_threshold`` (default 0.5).
    drivers : sequence of str
        Canonical drivers to read besides ``gpp`` (see :data:`COLUMNS`).  A file that lacks a
        driver's column gives NaN for that driver at that site (logged as a warning naming the
        site, column and file); the file's GPP and the other sites are read as usual.

    Returns
    -------
    xarray.Dataset
        ``gpp`` [gC m-2 d-1] and drivers on ``(site, time)`` with coordinates ``lat``, ``lon``
        and ``igbp`` (IGBP code, str).  ``ds["gpp"].attrs`` counts values read and dropped
        (``n_values_read``, ``n_dropped_missing``, ``n_dropped_qc``,
        ``n_steps_dropped_coverage``); the same counts are logged on ``xgpp.io``.  Driver
        columns missing from files are recorded in ``ds.attrs['missing_driver_columns']``, a
        JSON object ``{site: {driver: {"column", "file", "n_values"}}}`` (``n_values``: file
        rows set to NaN; ``"{}"`` when none), and per driver in ``attrs``
        ``n_values_missing_column`` and ``sites_missing_column``.  Every variable's ``attrs``
        count the cells that were not numbers (``n_dropped_unreadable``: binary garbage,
        stray text) and the values outside its physically possible range
        (``n_dropped_implausible``: :attr:`xgpp.variables.Variable.limits`, infinities
        included), both dropped as NaN with a logged warning; drivers also count their
        missing (-9999, empty, NaN) values in ``n_dropped_missing``.  Rows out of time order
        are read sorted.

    Raises
    ------
    KeyError
        A file lacks the GPP column ``gpp_variable`` (the message lists the file's GPP columns
        and all its columns), its timestamp or ``NEE_VUT_REF_QC``; a site is not in ``sites``.
    ValueError
        Bad file names, all-missing GPP, duplicated or unparseable timestamps, unknown
        ``drivers``...; :class:`~xgpp.errors.UnitError` for a column whose median lies outside
        the variable's plausible ``bounds`` (a unit mistake such as kelvin labelled degC; the
        message names the file, column and the likely mistake).
    OSError
        :class:`~xgpp.errors.CorruptChunkError`: a file that is not CSV text (binary, truncated
        mid-quote), naming the file.
    """
    check_freq(freq)
    unknown = [d for d in drivers if d not in COLUMNS]
    if unknown:
        raise InputError(f"drivers {unknown} have no FLUXNET column mapping; choose from "
                         f"{sorted(COLUMNS)}.")
    urls = expand_paths(paths, suffixes=(".csv",), what="FLUXNET CSV")
    table = _load_sites(sites) if sites is not None else None
    skipped = [u for u in urls if not _NAME.match(basename(u))]
    if len(skipped) == len(urls):
        parse_fluxnet_name(urls[0])  # raises with the naming rule
    if skipped:
        log.warning("read_fluxnet skipped %d file(s) not named like FLUXNET CSVs: %s",
                    len(skipped), [basename(u) for u in skipped])
    infos = {u: parse_fluxnet_name(u) for u in urls if u not in skipped}
    by_site: dict[str, str] = {}
    for u, info in infos.items():
        if info.site in by_site:
            raise InputError(f"site {info.site} has several files: {basename(by_site[info.site])} "
                             f"and {basename(u)}; pass one file (one resolution) per site.")
        by_site[info.site] = u
    if table is not None:
        absent = [s for s in by_site if s not in table.index]
        if absent:
            raise NotFoundError(f"site(s) {absent} are not in the site table (it lists "
                           f"{len(table)} sites); add them with LOCATION_LAT, LOCATION_LONG and "
                           "IGBP, or remove their files.")
    columns = {"gpp": (gpp_variable, ""), **{d: COLUMNS[d] for d in drivers}}
    series, totals = {}, {"values": 0, "missing": 0, "qc": 0, "coverage": 0}
    by_var: dict[str, dict[str, int]] = {}
    missing_by_site: dict[str, dict[str, dict[str, object]]] = {}
    for site, url in sorted(by_site.items()):
        info = infos[url]
        cols = dict(columns)
        cols["gpp"] = (gpp_variable, "umol m-2 s-1" if info.res in ("HH", "HR") else "gC m-2 d-1")
        thr = qc_threshold if qc_threshold is not None else (1 if info.res in ("HH", "HR")
                                                             else 0.5)
        df, counts, missing_cols, file_dropped = _read_file(url, info, cols, thr)
        for name, kinds in file_dropped.items():
            for kind, n in kinds.items():
                by_var.setdefault(name, dict.fromkeys(kinds, 0))[kind] += n
        if missing_cols:
            missing_by_site[site] = missing_cols
        agg, dropped = _aggregate(df, info.res, freq, min_coverage)
        counts["coverage"] = dropped
        for k in totals:
            totals[k] += counts[k]
        log.info("%s: %d %s values, %d missing (-9999), %d dropped by QC, %d steps dropped by "
                 "coverage < %s", site, counts["values"], gpp_variable, counts["missing"],
                 counts["qc"], dropped, min_coverage)
        series[site] = agg
    start = min(s.index.min() for s in series.values())
    end = max(s.index.max() for s in series.values())
    times = step_range(start, end, freq)
    names = list(columns)
    site_ids = sorted(series)
    data = np.stack([series[s].reindex(times)[names].to_numpy(float) for s in site_ids])
    ds = xr.Dataset(
        {n: (("site", "time"), data[:, :, k], attrs_for(n)) for k, n in enumerate(names)},
        coords={"site": ("site", np.array(site_ids, dtype=str), {"long_name": "FLUXNET site id"}),
                "time": ("time", times.values, {"long_name": "start of the time step"})},
    )
    if table is not None:
        lat = table.loc[site_ids, "LOCATION_LAT"].to_numpy(float)
        lon = table.loc[site_ids, "LOCATION_LONG"].to_numpy(float)
        igbp = table.loc[site_ids, "IGBP"].astype(str).str.strip().to_numpy(dtype=str)
    else:
        lat = lon = np.full(len(site_ids), np.nan)
        igbp = np.array([""] * len(site_ids), dtype=str)
        log.warning("read_fluxnet without a site table: lat/lon are NaN and igbp empty")
    ds = ds.assign_coords(
        lat=("site", lat, {"units": "degrees_north", "standard_name": "latitude"}),
        lon=("site", lon, {"units": "degrees_east", "standard_name": "longitude"}),
        igbp=("site", igbp, {"long_name": "IGBP land-cover code (FLUXNET site list)"}),
    )
    ds["gpp"].attrs.update({
        "source_variable": gpp_variable, "qc_variable": _QC,
        "n_values_read": totals["values"], "n_dropped_missing": totals["missing"],
        "n_dropped_qc": totals["qc"], "n_steps_dropped_coverage": totals["coverage"],
    })
    for name in names:
        kinds = by_var.get(name, {})
        if name != "gpp":
            ds[name].attrs["n_dropped_missing"] = kinds.get("missing", 0)
        ds[name].attrs["n_dropped_unreadable"] = kinds.get("unreadable", 0)
        ds[name].attrs["n_dropped_implausible"] = kinds.get("implausible", 0)
    for name in drivers:
        lacking = [s for s in site_ids if name in missing_by_site.get(s, {})]
        ds[name].attrs["n_values_missing_column"] = sum(
            int(missing_by_site[s][name]["n_values"]) for s in lacking)
        ds[name].attrs["sites_missing_column"] = ", ".join(lacking)
    if missing_by_site:
        log.warning("read_fluxnet: %d of %d site(s) lack driver column(s), read as NaN: %s",
                    len(missing_by_site), len(site_ids),
                    {s: sorted(m) for s, m in sorted(missing_by_site.items())})
    if "ppfd" in ds:
        ds["ppfd"].attrs["comment"] = f"SW_IN_F x {SW_TO_PPFD} umol J-1 (Meek et al. 1984)"
    ds.attrs.update({"source": "FLUXNET", "time_step": freq, "min_coverage": min_coverage,
                     "skipped_files": ", ".join(basename(u) for u in skipped),
                     "missing_driver_columns": json.dumps(
                         {s: missing_by_site[s] for s in sorted(missing_by_site)},
                         sort_keys=True),
                     "qc_rule": "HH/HR: NEE_VUT_REF_QC <= threshold (default 1); DD/WW/MM: "
                                "NEE_VUT_REF_QC (good-data fraction) >= threshold (default 0.5)"})
    return ds
