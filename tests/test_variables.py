"""Unit strings are read by cf-units (UDUNITS-2) and converted to the canonical table."""

import dask.array as dsa
import numpy as np
import pytest
import xarray as xr

from xgpp.io._units import canonical_spelling, to_canonical
from xgpp.variables import VARIABLES, normalise_units, unit_conversion


def _da(values, units, name):
    return xr.DataArray(np.asarray(values, dtype=np.float64), dims="x", name=name,
                        attrs={"units": units})


@pytest.mark.parametrize("units", ["W/m^2/sr/um", "W m-2 sr-1 um-1", "W/m^2/sr/µm",
                                   "W m-2 um-1 sr-1", "mW m-2 sr-1 nm-1", "mW/m2/nm/sr"])
def test_udunits_spellings_of_the_sif_unit_are_the_canonical_unit(units):
    out = normalise_units(_da([0.5, 1.25], units, "sif"))
    assert out.attrs["units"] == "mW m-2 nm-1 sr-1"
    # the same unit: values untouched, bit for bit (no 1.0000000000000002 factor)
    np.testing.assert_array_equal(out.values, [0.5, 1.25])
    assert canonical_spelling(units, "sif") == "mW m-2 nm-1 sr-1"


def test_a_sif_unit_that_needs_a_factor_is_converted():
    out = normalise_units(_da([2.0], "W m-2 nm-1 sr-1", "sif"))  # 1 W/nm = 1000 mW/nm
    np.testing.assert_allclose(out.values, [2000.0])


def test_kelvin_to_celsius_uses_the_offset():
    out = normalise_units(_da([273.15, 300.0], "K", "tair"))
    assert out.attrs["units"] == "degC" and out.name == "tair"
    np.testing.assert_allclose(out.values, [0.0, 26.85], atol=1e-12)
    np.testing.assert_allclose(normalise_units(_da([212.0], "degF", "tair")).values, [100.0])


@pytest.mark.parametrize(("units", "name", "factor"), [
    ("hPa", "vpd", 100.0), ("kPa", "vpd", 1000.0), ("kPa", "patm", 1000.0),
    ("mbar", "patm", 100.0), ("Pa", "patm", 1.0),
])
def test_pressures_are_converted_to_pascal(units, name, factor):
    out = normalise_units(_da([1.0, 10.0], units, name))
    assert out.attrs["units"] == "Pa"
    np.testing.assert_allclose(out.values, [factor, 10 * factor])


@pytest.mark.parametrize(("units", "factor"), [
    ("gC m-2 d-1", 1.0), ("g C m-2 d-1", 1.0), ("gC/m2/d", 1.0), ("gC m-2 s-1", 86400.0),
    ("kgC m-2 s-1", 86400e3),
    # 1 umol CO2 = 1 umol C = 12.011e-6 g C; per second -> per day
    ("umol m-2 s-1", 12.011e-6 * 86400), ("umolCO2 m-2 s-1", 12.011e-6 * 86400),
    ("umol CO2 m-2 s-1", 12.011e-6 * 86400),
    # a mass of CO2 is 12.011 / 44.0095 carbon
    ("gCO2 m-2 d-1", 12.011 / 44.0095),
])
def test_carbon_fluxes_are_converted_by_molar_masses(units, factor):
    scale, offset = unit_conversion(units, "gpp")
    assert offset == 0.0
    assert scale == pytest.approx(factor, rel=1e-10)


def test_nonsense_unit_names_variable_unit_and_canonical():
    with pytest.raises(ValueError, match=r"variable 'sif' has units 'photons per banana', which "
                                         r"UDUNITS \(cf-units\) cannot read.*'mW m-2 nm-1 sr-1'"):
        normalise_units(_da([1.0], "photons per banana", "sif"))


@pytest.mark.parametrize(("units", "name"), [("m", "tair"), ("W m-2", "ppfd"), ("Pa", "sif"),
                                              ("furlongs", "tair"), ("J", "gpp")])
def test_incompatible_unit_names_variable_unit_and_canonical(units, name):
    canonical = VARIABLES[name].units
    with pytest.raises(ValueError, match=rf"variable '{name}' has units '{units}', which UDUNITS "
                                         rf"reads as .*'{canonical}'"):
        normalise_units(_da([1.0], units, name))


def test_missing_and_empty_units_are_refused_except_for_dimensionless():
    with pytest.raises(ValueError, match=r"'tair' has no 'units' attribute.*expected 'degC'"):
        normalise_units(xr.DataArray([1.0], dims="x", name="tair"))
    with pytest.raises(ValueError, match=r"'tair' has units '', which is empty.*'degC'"):
        normalise_units(_da([1.0], "", "tair"))
    assert normalise_units(_da([0.5], "", "fapar")).attrs["units"] == "1"
    np.testing.assert_allclose(normalise_units(_da([50.0], "%", "fapar")).values, [0.5])


def test_located_message_and_numpy_path():
    np.testing.assert_allclose(to_canonical(np.array([1.5]), "kPa", "patm"), [1500.0])
    with pytest.raises(ValueError, match=r"^f\.nc column X: variable 'vpd' has units 'kg'"):
        to_canonical(np.array([1.0]), "kg", "vpd", where="f.nc column X")


def test_conversion_keeps_float32_and_dask_laziness():
    lazy = xr.DataArray(dsa.ones((4,), chunks=2, dtype=np.float32), dims="x", name="tair",
                        attrs={"units": "K"})
    out = normalise_units(lazy)
    assert out.chunks is not None and out.dtype == np.float32
    np.testing.assert_allclose(out.values, 1.0 - 273.15, rtol=1e-6)


def test_parsed_units_are_cached():
    from xgpp.variables import _conversion

    unit_conversion("hPa", "vpd")
    before = _conversion.cache_info()
    for _ in range(100):
        unit_conversion("hPa", "vpd")
    after = _conversion.cache_info()
    assert after.hits - before.hits == 100 and after.misses == before.misses
