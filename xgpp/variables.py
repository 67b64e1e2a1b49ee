"""The canonical vocabulary of xgpp: every variable's name, meaning, CF standard name, unit and bounds.

Domain knowledge lives here as data.  Readers map product names onto these names, checks read
their bounds from here, and writers copy ``units``/``long_name``/``standard_name`` from here.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np
import xarray as xr

__all__ = [
    "VARIABLES",
    "DRIVERS",
    "STATIC",
    "Variable",
    "attrs_for",
    "check_bounds",
    "check_units",
    "get_variable",
    "normalise_units",
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
        Canonical unit (CF/udunits spelling); data must carry exactly this ``units`` attribute.
    standard_name : str or None
        CF standard name where one exists.
    bounds : tuple of float
        Plausible physical range ``(low, high)`` in ``units``; values outside raise a warning.
    dims : tuple of str
        Canonical dimension order.
    """

    name: str
    long_name: str
    units: str
    standard_name: str | None
    bounds: tuple[float, float]
    dims: tuple[str, ...] = ("time", "lat", "lon")

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
             "air_temperature", (-60.0, 55.0)),
    Variable("vpd", "vapour pressure deficit, daytime mean", "Pa",
             "water_vapor_saturation_deficit_in_air", (0.0, 10000.0)),
    Variable("ppfd", "photosynthetic photon flux density, 24-h mean", "umol m-2 s-1",
             "surface_downwelling_photosynthetic_photon_flux_in_air", (0.0, 1500.0)),
    Variable("co2", "atmospheric CO2 mole fraction", "ppm",
             "mole_fraction_of_carbon_dioxide_in_air", (250.0, 700.0)),
    Variable("patm", "surface air pressure", "Pa", "surface_air_pressure", (40000.0, 110000.0)),
    Variable("swc", "root-zone relative soil water availability", "1",
             "volume_fraction_of_condensed_water_in_soil_at_field_capacity", (0.0, 1.0)),
    # --- vegetation observations (time, lat, lon)
    Variable("fapar", "fraction of absorbed photosynthetically active radiation", "1",
             "fraction_of_surface_downwelling_photosynthetic_radiative_flux_absorbed_by_vegetation",
             (0.0, 1.0)),
    Variable("lai", "leaf area index", "m2 m-2", "leaf_area_index", (0.0, 12.0)),
    Variable("nirv", "near-infrared reflectance of vegetation (NDVI x NIR)", "1", None,
             (-0.05, 0.6)),
    # --- static (lat, lon)
    Variable("igbp", "IGBP land-cover class (0 water ... 16 barren)", "1", "area_type",
             (0.0, 17.0), ("lat", "lon")),
    Variable("land_mask", "land fraction mask (1 land, 0 water)", "1", "land_binary_mask",
             (0.0, 1.0), ("lat", "lon")),
    Variable("elevation", "surface elevation above sea level", "m", "surface_altitude",
             (-500.0, 9000.0), ("lat", "lon")),
    # --- targets
    Variable("gpp", "gross primary productivity of carbon", "gC m-2 d-1",
             "gross_primary_productivity_of_biomass_expressed_as_carbon", (-1.0, 40.0)),
    Variable("sif", "solar-induced chlorophyll fluorescence near 740 nm", "mW m-2 nm-1 sr-1",
             None, (-2.0, 6.0)),
    Variable("sif_count", "number of soundings or retrievals in the cell and time step", "1",
             None, (0.0, 1e7)),
]

VARIABLES: dict[str, Variable] = {v.name: v for v in _TABLE}

#: Time-varying gridded drivers written in the twin world's ``drivers`` store, in canonical order.
DRIVERS: tuple[str, ...] = ("tair", "vpd", "ppfd", "co2", "patm", "swc", "fapar", "lai", "nirv")
#: Static gridded fields written beside the drivers.
STATIC: tuple[str, ...] = ("igbp", "land_mask", "elevation")

# Unit spellings that mean exactly the canonical unit, and linear conversions (scale, offset)
# applied as ``canonical = value * scale + offset``.
_UNIT_ALIASES: dict[str, dict[str, tuple[float, float]]] = {
    "degC": {"degC": (1, 0), "°C": (1, 0), "deg_C": (1, 0), "celsius": (1, 0), "C": (1, 0),
             "K": (1, -273.15), "kelvin": (1, -273.15)},
    "Pa": {"Pa": (1, 0), "hPa": (100, 0), "kPa": (1000, 0), "mbar": (100, 0), "millibar": (100, 0)},
    "umol m-2 s-1": {"umol m-2 s-1": (1, 0), "µmol m-2 s-1": (1, 0), "umol/m2/s": (1, 0),
                     "micromol m-2 s-1": (1, 0), "mol m-2 s-1": (1e6, 0)},
    "ppm": {"ppm": (1, 0), "1e-6": (1, 0), "umol mol-1": (1, 0), "µmol mol-1": (1, 0)},
    "1": {"1": (1, 0), "": (1, 0), "-": (1, 0), "fraction": (1, 0), "%": (0.01, 0)},
    "m2 m-2": {"m2 m-2": (1, 0), "m2/m2": (1, 0), "m^2/m^2": (1, 0), "1": (1, 0)},
    "m": {"m": (1, 0), "km": (1000, 0)},
    "gC m-2 d-1": {"gC m-2 d-1": (1, 0), "g C m-2 d-1": (1, 0), "gC m-2 day-1": (1, 0),
                   "gC/m2/d": (1, 0), "g m-2 d-1": (1, 0),
                   # 1 umol CO2 m-2 s-1 = 12.011e-6 g C m-2 s-1 * 86400 s d-1
                   "umol m-2 s-1": (12.011e-6 * 86400, 0), "umolCO2 m-2 s-1": (12.011e-6 * 86400, 0),
                   "gC m-2 s-1": (86400, 0), "kgC m-2 s-1": (86400e3, 0)},
    "mW m-2 nm-1 sr-1": {"mW m-2 nm-1 sr-1": (1, 0), "mW m-2 sr-1 nm-1": (1, 0), "mW/m2/nm/sr": (1, 0),
                         "mW/m^2/nm/sr": (1, 0), "W m-2 um-1 sr-1": (1, 0),
                         "W m-2 µm-1 sr-1": (1, 0), "W/m^2/sr/µm": (1, 0), "W/m2/sr/um": (1, 0)},
}


def get_variable(name: str) -> Variable:
    """Look up a canonical variable, with an error that lists the known names."""
    try:
        return VARIABLES[name]
    except KeyError as err:
        raise KeyError(
            f"unknown variable {name!r}: xgpp's canonical variables are {sorted(VARIABLES)}. "
            "Rename your variable to one of these (see docs/data_model.md)."
        ) from err


def attrs_for(name: str) -> dict[str, str]:
    """CF attributes (``long_name``, ``units``, ``standard_name``) of a canonical variable."""
    return get_variable(name).attrs()


def unit_spellings(name: str) -> dict[str, tuple[float, float]]:
    """Unit spellings convertible to variable ``name``'s canonical unit.

    Returns a new dict: spelling -> ``(scale, offset)`` with ``canonical = value * scale + offset``.
    """
    var = get_variable(name)
    return dict(_UNIT_ALIASES.get(var.units, {var.units: (1, 0)}))


def normalise_units(da: xr.DataArray, name: str | None = None) -> xr.DataArray:
    """Convert ``da`` to its canonical unit, driven by its ``units`` attribute (never by magnitude).

    Parameters
    ----------
    da : xarray.DataArray
        Data with a ``units`` attribute.
    name : str, optional
        Canonical variable name; defaults to ``da.name``.

    Raises
    ------
    ValueError
        If ``units`` is missing or not convertible to the canonical unit.
    """
    name = name or str(da.name)
    var = get_variable(name)
    units = da.attrs.get("units")
    if units is None:
        raise ValueError(
            f"variable {name!r} has no 'units' attribute; expected {var.units!r}. "
            f"Set ds[{name!r}].attrs['units'] to the unit the data are in."
        )
    table = unit_spellings(name)
    if str(units).strip() not in table:
        raise ValueError(
            f"variable {name!r} has units {units!r}, which xgpp cannot convert to the canonical "
            f"{var.units!r}; known spellings: {sorted(table)}."
        )
    scale, offset = table[str(units).strip()]
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
            raise KeyError(f"{where} has no variable {name!r}; it has {sorted(map(str, items))}.")
        var = get_variable(str(name))
        units = items[name].attrs.get("units")
        if units != var.units:
            raise ValueError(
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
