"""The canonical vocabulary of xgpp: every variable's name, meaning, CF standard name, unit and bounds.

Domain knowledge lives here as data.  Readers map product names onto these names, checks read
their bounds from here, and writers copy ``units``/``long_name``/``standard_name`` from here.
"""

from __future__ import annotations

import functools
import re
import threading
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import xarray as xr

from xgpp.errors import NotFoundError, UnitError

__all__ = [
    "VARIABLES",
    "DRIVERS",
    "STATIC",
    "UNIT_SLIPS",
    "UnitSlip",
    "Variable",
    "attrs_for",
    "check_bounds",
    "check_units",
    "get_variable",
    "normalise_units",
    "unit_conversion",
    "unit_spellings",
]


@dataclass(frozen=True)
class Variable:
    """One canonical variable.

    Attributes
    ----------
    name : str
        Canonical short name used in every xgpp dataset.
    long_name : str
        Human-readable meaning (written as the CF ``long_name`` attribute).
    units : str
        Canonical unit (UDUNITS spelling, but ``gC`` for a mass of carbon); data must carry
        exactly this ``units`` attribute (:func:`normalise_units` converts other spellings).
    standard_name : str or None
        CF standard name where one exists.
    bounds : tuple of float
        Plausible physical range ``(low, high)`` in ``units``; values outside raise a warning,
        and readers refuse a file whose median lies outside it (a unit mistake, see
        :data:`UNIT_SLIPS`).
    dims : tuple of str
        Canonical dimension order.
    limits : tuple of float or None
        Physically impossible beyond ``(low, high)`` in ``units`` (wider than ``bounds``):
        readers drop and count such values in sounding and site files and refuse gridded
        files that hold them (docs/reliability.md, "Corrupt and hostile input").  None: no
        limit.
    """

    name: str
    long_name: str
    units: str
    standard_name: str | None
    bounds: tuple[float, float]
    dims: tuple[str, ...] = ("time", "lat", "lon")
    limits: tuple[float, float] | None = None

    def attrs(self) -> dict[str, str]:
        """CF attributes for this variable."""
        out = {"long_name": self.long_name, "units": self.units}
        if self.standard_name:
            out["standard_name"] = self.standard_name
        return out

    def to_dict(self) -> dict:
        """Return a JSON-ready dict."""
        return asdict(self)


_TABLE = [
    # --- meteorological drivers (time, lat, lon)
    Variable("tair", "near-surface air temperature, 8-day daytime mean", "degC",
             "air_temperature", (-60.0, 55.0), limits=(-100.0, 70.0)),
    Variable("vpd", "vapour pressure deficit, daytime mean", "Pa",
             "water_vapor_saturation_deficit_in_air", (0.0, 10000.0), limits=(-100.0, 20000.0)),
    Variable("ppfd", "photosynthetic photon flux density, 24-h mean", "umol m-2 s-1",
             "surface_downwelling_photosynthetic_photon_flux_in_air", (0.0, 1500.0),
             limits=(-50.0, 3500.0)),
    Variable("co2", "atmospheric CO2 mole fraction", "ppm",
             "mole_fraction_of_carbon_dioxide_in_air", (250.0, 700.0), limits=(100.0, 2000.0)),
    Variable("patm", "surface air pressure", "Pa", "surface_air_pressure", (40000.0, 110000.0),
             limits=(30000.0, 115000.0)),
    Variable("swc", "root-zone relative soil water availability", "1",
             "volume_fraction_of_condensed_water_in_soil_at_field_capacity", (0.0, 1.0),
             limits=(-0.05, 1.05)),
    # --- vegetation observations (time, lat, lon)
    Variable("fapar", "fraction of absorbed photosynthetically active radiation", "1",
             "fraction_of_surface_downwelling_photosynthetic_radiative_flux_absorbed_by_vegetation",
             (0.0, 1.0), limits=(-0.05, 1.05)),
    Variable("lai", "leaf area index", "m2 m-2", "leaf_area_index", (0.0, 12.0),
             limits=(-0.05, 15.0)),
    Variable("nirv", "near-infrared reflectance of vegetation (NDVI x NIR)", "1", None,
             (-0.05, 0.6), limits=(-0.5, 1.0)),
    # --- static (lat, lon)
    Variable("igbp", "IGBP land-cover class (0 water ... 16 barren)", "1", "area_type",
             (0.0, 17.0), ("lat", "lon")),
    Variable("land_mask", "land fraction mask (1 land, 0 water)", "1", "land_binary_mask",
             (0.0, 1.0), ("lat", "lon")),
    Variable("elevation", "surface elevation above sea level", "m", "surface_altitude",
             (-500.0, 9000.0), ("lat", "lon")),
    # --- targets
    Variable("gpp", "gross primary productivity of carbon", "gC m-2 d-1",
             "gross_primary_productivity_of_biomass_expressed_as_carbon", (-1.0, 40.0),
             limits=(-50.0, 100.0)),
    Variable("sif", "solar-induced chlorophyll fluorescence near 740 nm", "mW m-2 nm-1 sr-1",
             None, (-2.0, 6.0), limits=(-30.0, 50.0)),
    Variable("sif_count", "number of soundings or retrievals in the cell and time step", "1",
             None, (0.0, 1e7)),
]

#: Canonical variable name -> :class:`Variable` (meaning, CF standard name, unit, bounds).
VARIABLES: dict[str, Variable] = {v.name: v for v in _TABLE}

#: Time-varying gridded drivers written in the twin world's ``drivers`` store, in canonical order.
DRIVERS: tuple[str, ...] = ("tair", "vpd", "ppfd", "co2", "patm", "swc", "fapar", "lai", "nirv")
#: Static gridded fields written beside the drivers.
STATIC: tuple[str, ...] = ("igbp", "land_mask", "elevation")


@dataclass(frozen=True)
class UnitSlip:
    """A common unit mistake: data in another unit than the one their ``units`` attribute says.

    ``value * scale + offset`` undoes the mistake (gives the value in the canonical unit);
    ``units`` limits the slip to variables of those canonical units (None: any).
    """

    label: str
    scale: float
    offset: float = 0.0
    units: tuple[str, ...] | None = None


#: Unit mistakes readers name when a file's median lies outside its variable's ``bounds``, tried
#: in order; the first that brings the median inside is suggested.
UNIT_SLIPS: tuple[UnitSlip, ...] = (
    UnitSlip("kelvin labelled as degrees Celsius (subtract 273.15)", 1.0, -273.15, ("degC",)),
    UnitSlip("degrees Fahrenheit labelled as degrees Celsius", 5.0 / 9.0, -160.0 / 9.0,
             ("degC",)),
    UnitSlip("1000 times too large: a unit 1000 times smaller labelled as the larger one "
             "(mW as W, W m-2 nm-1 as W m-2 um-1, Pa as kPa, g as kg)", 1e-3),
    UnitSlip("100 times too large: percent labelled as a fraction, or Pa as hPa", 1e-2),
    UnitSlip("10 times too large: hPa labelled as kPa, or a 0.1 scale factor not applied",
             1e-1),
    UnitSlip("1000 times too small: a unit 1000 times larger labelled as the smaller one "
             "(W as mW, kPa as Pa)", 1e3),
    UnitSlip("100 times too small: a fraction labelled as percent, or hPa as Pa", 1e2),
    UnitSlip("10 times too small: kPa labelled as hPa", 1e1),
)

# --------------------------------------------------------------------------- units
# Unit strings are read by cf-units (UDUNITS-2, the unit library of the CF conventions): any
# spelling it reads as the canonical unit, or as a unit convertible to it (by a factor, or by an
# offset for temperatures), is converted.  Only what UDUNITS cannot say is written down here.

#: Spellings found in products that UDUNITS cannot read, or reads as another unit (``C`` is the
#: coulomb), by canonical unit: spelling -> the UDUNITS spelling it stands for.
_EXTRA_SPELLINGS: dict[str, dict[str, str]] = {
    "degC": {"C": "degC", "deg C": "degC"},
    "1": {"": "1", "-": "1", "fraction": "1"},
}

#: Canonical units that name a chemical species, which UDUNITS has no notion of: canonical ->
#: (UDUNITS unit of the species' mass flux, the same as an amount flux, molar mass [g mol-1]).  Found units may tag
#: the species (``gC``, ``g C``, ``umolCO2``, ``mol(CO2)``); an untagged mass is taken as carbon,
#: a mass of CO2 is converted to carbon by molar masses, and an amount of substance (mol of CO2
#: or of C: one carbon atom each) by the molar mass of carbon.
_SPECIES_UNITS: dict[str, tuple[str, str, float]] = {
    "gC m-2 d-1": ("g m-2 d-1", "mol m-2 d-1", 12.011),
}
#: Molar masses [g mol-1] of the species a carbon unit may be tagged with.
_MOLAR_MASS: dict[str, float] = {"C": 12.011, "CO2": 44.0095}
#: A species tag right after a mass (``g``) or amount (``mol``) unit.
_SPECIES_TAG = re.compile(r"(?<=[gl])\s*(?:\((CO2|C)\)|(CO2|C))(?![A-Za-z0-9_])")
#: Significant digits kept of a conversion factor (``W m-2 um-1`` -> ``mW m-2 nm-1`` is 1,
#: not 1.0000000000000002).
_DIGITS = 12
#: UDUNITS-2 is not thread-safe; readers run in dask threads.
_UDUNITS_LOCK = threading.Lock()


def get_variable(name: str) -> Variable:
    """Look up a canonical variable, with an error that lists the known names."""
    try:
        return VARIABLES[name]
    except KeyError as err:
        raise NotFoundError(
            f"unknown variable {name!r}: xgpp's canonical variables are {sorted(VARIABLES)}. "
            "Rename your variable to one of these (see docs/data_model.md)."
        ) from err


def attrs_for(name: str) -> dict[str, str]:
    """CF attributes (``long_name``, ``units``, ``standard_name``) of a canonical variable."""
    return get_variable(name).attrs()


def unit_spellings(name: str) -> dict[str, tuple[float, float]]:
    """Spellings of variable ``name``'s unit that xgpp accepts beyond what UDUNITS reads.

    Any unit string that cf-units (UDUNITS-2) reads as a unit convertible to the canonical one
    is accepted too (see :func:`unit_conversion`); this lists the canonical spelling and the
    product spellings UDUNITS cannot read (``"fraction"``, ``"C"`` for degrees Celsius).

    Returns
    -------
    dict
        A new dict: spelling -> ``(scale, offset)`` with ``canonical = value * scale + offset``.
    """
    var = get_variable(name)
    spellings = [var.units, *_EXTRA_SPELLINGS.get(var.units, {})]
    return {s: unit_conversion(s, name) for s in spellings}


def unit_conversion(units: str, name: str) -> tuple[float, float]:
    """Linear conversion from ``units`` to variable ``name``'s canonical unit.

    ``units`` is read by cf-units (UDUNITS-2 spellings: ``"W/m^2/sr/um"``, ``"W m-2 sr-1 um-1"``,
    ``"hPa"``, ``"K"``...); parsed units are cached.

    Parameters
    ----------
    units : str
        Unit string as found in the data (a ``units`` attribute).
    name : str
        Canonical variable name (see :data:`VARIABLES`).

    Returns
    -------
    tuple of float
        ``(scale, offset)`` with ``canonical = value * scale + offset``.

    Raises
    ------
    ValueError
        If UDUNITS cannot read ``units``, or reads a unit not convertible to the canonical one
        (another physical dimension).
    """
    var = get_variable(name)
    found = str(units).strip()
    result = _conversion(found, var.units)
    if isinstance(result, str):
        raise UnitError(
            f"variable {name!r} has units {units!r}, {result}; expected the canonical "
            f"{var.units!r} or a unit convertible to it (e.g. {_examples(var.units)}). Convert "
            f"the data, or set the 'units' attribute to the UDUNITS spelling of the unit they "
            "are in."
        )
    return result


def _examples(canonical: str) -> str:
    examples = {"degC": "'K'", "Pa": "'hPa', 'kPa'", "1": "'%'",
                "mW m-2 nm-1 sr-1": "'W m-2 um-1 sr-1', 'W/m^2/sr/um'",
                "gC m-2 d-1": "'gC m-2 s-1', 'umol CO2 m-2 s-1'",
                "umol m-2 s-1": "'mol m-2 s-1'", "ppm": "'umol mol-1'", "m": "'km'"}
    return examples.get(canonical, repr(canonical))


@functools.lru_cache(maxsize=1024)
def _conversion(found: str, canonical: str) -> tuple[float, float] | str:
    """``(scale, offset)`` from ``found`` to ``canonical``, or why there is none (cached)."""
    found = _EXTRA_SPELLINGS.get(canonical, {}).get(found, found)
    if found == canonical:
        return (1.0, 0.0)
    with _UDUNITS_LOCK:
        if canonical in _SPECIES_UNITS:
            return _species_conversion(found, canonical)
        unit = _parse(found)
        if isinstance(unit, str):
            return unit
        return _linear(unit, _parse(canonical), canonical)


def _parse(units: str):
    """A cf-units ``Unit``, or why ``units`` is not one (call under ``_UDUNITS_LOCK``)."""
    from cf_units import Unit

    if not units:
        return "which is empty"
    try:
        unit = Unit(units)
    except ValueError:
        return "which UDUNITS (cf-units) cannot read as a unit"
    if unit.is_unknown() or unit.is_no_unit():
        return "which UDUNITS (cf-units) reads as no unit"
    return unit


def _linear(unit, target, canonical: str) -> tuple[float, float] | str:
    if unit.is_time_reference() or not unit.is_convertible(target):
        return (f"which UDUNITS reads as {unit.definition!r}, a quantity that cannot be "
                f"converted to {canonical!r} ({target.definition!r})")
    zero, one = (float(v) for v in unit.convert(np.array([0.0, 1.0]), target))
    scale = _round(one - zero)
    offset = 0.0 if abs(zero) <= 1e-12 * max(1.0, abs(scale)) else _round(zero)
    return (scale, offset)


def _round(x: float) -> float:
    return float(f"{x:.{_DIGITS}g}")


def _species_conversion(found: str, canonical: str) -> tuple[float, float] | str:
    """Conversion to a carbon unit (see ``_SPECIES_UNITS``); call under ``_UDUNITS_LOCK``."""
    from cf_units import Unit

    mass_units, amount_units, molar_mass = _SPECIES_UNITS[canonical]
    tags = {a or b for a, b in _SPECIES_TAG.findall(found)}
    if len(tags) > 1:
        return f"which names more than one chemical species ({sorted(tags)})"
    tag = tags.pop() if tags else None
    unit = _parse(_SPECIES_TAG.sub("", found).strip())
    if isinstance(unit, str):
        return unit
    mass, amount = Unit(mass_units), Unit(amount_units)
    if unit.is_convertible(mass):
        scale, _ = _linear(unit, mass, canonical)
        if tag is not None:
            scale *= molar_mass / _MOLAR_MASS[tag]
        return (_round(scale), 0.0)
    if unit.is_convertible(amount):
        scale, _ = _linear(unit, amount, canonical)
        return (_round(scale * molar_mass), 0.0)
    return (f"which UDUNITS reads as {unit.definition!r}, neither a mass flux of carbon "
            f"convertible to {canonical!r} nor an amount (mol) of CO2 or C")


def normalise_units(da: xr.DataArray, name: str | None = None) -> xr.DataArray:
    """Convert ``da`` to its canonical unit, driven by its ``units`` attribute (never by magnitude).

    The ``units`` attribute is read by cf-units (UDUNITS-2): any spelling convertible to the
    canonical unit is converted (see :func:`unit_conversion`).

    Parameters
    ----------
    da : xarray.DataArray
        Data with a ``units`` attribute.
    name : str, optional
        Canonical variable name; defaults to ``da.name``.

    Returns
    -------
    xarray.DataArray
        ``da`` in the canonical unit, named ``name``, with the variable's CF attributes.

    Raises
    ------
    ValueError
        If ``units`` is missing or not convertible to the canonical unit.
    """
    name = name or str(da.name)
    var = get_variable(name)
    units = da.attrs.get("units")
    if units is None:
        raise UnitError(
            f"variable {name!r} has no 'units' attribute; expected {var.units!r}. "
            f"Set ds[{name!r}].attrs['units'] to the unit the data are in."
        )
    scale, offset = unit_conversion(units, name)
    out = da if (scale, offset) == (1, 0) else da * scale + offset
    out = out.rename(name)
    out.attrs = {**da.attrs, **var.attrs()}
    return out


def check_units(ds: xr.Dataset | xr.DataArray, names: list[str] | tuple[str, ...] | None = None,
                *, where: str = "dataset") -> None:
    """Raise if any canonical variable in ``ds`` does not carry exactly its canonical unit."""
    items = {ds.name: ds} if isinstance(ds, xr.DataArray) else dict(ds.data_vars)
    for name in names or [n for n in items if n in VARIABLES]:
        if name not in items:
            raise NotFoundError(f"{where} has no variable {name!r}; it has {sorted(map(str, items))}.")
        var = get_variable(str(name))
        units = items[name].attrs.get("units")
        if units != var.units:
            raise UnitError(
                f"variable {name!r} in {where} has units {units!r}, expected {var.units!r}. "
                f"Convert it with xgpp.variables.normalise_units(ds[{name!r}])."
            )


class BoundsWarning(UserWarning):
    """Values outside a variable's plausible range: usually a unit mistake."""


def _warn_outside(name: str, lo: float, hi: float, vmin: float, vmax: float) -> None:
    var = VARIABLES[name]
    if np.isfinite(vmin) and (vmin < lo or vmax > hi):
        warnings.warn(
            f"variable {name!r} has values in [{vmin:.4g}, {vmax:.4g}], outside the expected "
            f"range [{lo}, {hi}] {var.units}. Check units?", BoundsWarning, stacklevel=3,
        )


def check_bounds(da: xr.DataArray, name: str | None = None) -> xr.DataArray:
    """Return ``da`` with a lazy check that warns when values leave the plausible range.

    For dask-backed data the check runs per chunk when the data are computed (no hidden
    ``.compute()``); for numpy data it runs now.
    """
    name = name or str(da.name)
    lo, hi = get_variable(name).bounds

    def _check(block: np.ndarray) -> np.ndarray:
        if block.size and np.issubdtype(block.dtype, np.floating):
            with np.errstate(invalid="ignore"):
                finite = block[np.isfinite(block)]
            if finite.size:
                _warn_outside(name, lo, hi, float(finite.min()), float(finite.max()))
        return block

    if da.chunks is None:
        _check(np.asarray(da.values))
        return da
    return da.copy(data=da.data.map_blocks(_check, dtype=da.dtype))


__all__ += ["BoundsWarning"]
