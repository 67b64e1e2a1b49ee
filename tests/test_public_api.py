"""Every public name exists, and the front doors are what they claim to be."""

import subprocess
import sys

import pytest
import xarray as xr

import xgpp


def test_every_public_name_resolves():
    for name in xgpp.__all__:
        assert getattr(xgpp, name) is not None, name


def test_front_doors_are_callable():
    assert callable(xgpp.train) and callable(xgpp.predict) and callable(xgpp.cluster)
    assert callable(xgpp.load_model) and callable(xgpp.open_catalog) and callable(xgpp.open_cube)
    assert callable(xgpp.make_world) and callable(xgpp.write_world)


def test_accessor_is_registered_and_teaches_about_the_gpp_variable():
    ds = xr.Dataset({"gpp": ("x", [1.0, 2.0])})
    assert hasattr(ds.gpp, "predict") and hasattr(ds.gpp, "train")
    with pytest.raises(AttributeError, match=r"ds\['gpp'\]"):
        _ = ds.gpp.values


def test_import_is_light():
    code = ("import sys, xgpp; heavy = [m for m in ('torch', 'distributed', 'dask_gateway', "
            "'s3fs', 'dask_cuda') if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import xgpp pulled in {out.stdout.strip()}"


def test_cli_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "xgpp.cli", "--help"], capture_output=True,
                         text=True, check=True)
    for cmd in ("world", "train", "predict", "demo"):
        assert cmd in out.stdout
