"""xgpp.errors: one hierarchy, each class also its built-in; real failures raise the right class."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import xarray as xr

import xgpp.errors as errors
from xgpp.catalog import CatalogSecurityError, open_cube
from xgpp.errors import (
    BundleError,
    CorruptChunkError,
    DeviceError,
    IncompleteStoreError,
    InputError,
    MissingDependencyError,
    NotFoundError,
    ServiceAuthError,
    ServiceError,
    UnitError,
    UnknownOptionError,
    XgppError,
)
from xgpp.io.harmonize import harmonize
from xgpp.models import BundleFormatError, load_model
from xgpp.models.baselines import PModelBaseline
from xgpp.predict import check_inputs
from xgpp.splits import parse_split
from xgpp.train import TrainConfig
from xgpp.variables import unit_conversion

#: Each class and the built-in(s) it stands for (``except <built-in>`` must keep catching it).
BUILTINS = {
    InputError: (ValueError,),
    UnitError: (ValueError,),
    NotFoundError: (ValueError, KeyError),
    UnknownOptionError: (ValueError, TypeError),
    CorruptChunkError: (OSError,),
    IncompleteStoreError: (ValueError,),
    BundleError: (ValueError,),
    MissingDependencyError: (ImportError,),
    DeviceError: (RuntimeError,),
    ServiceError: (ConnectionError, OSError),
    ServiceAuthError: (PermissionError, ConnectionError, OSError),
}


def test_every_class_is_an_xgpp_error_and_its_builtin():
    classes = {obj for _, obj in inspect.getmembers(errors, inspect.isclass)
               if obj.__module__ == "xgpp.errors"}
    assert classes == {XgppError, *BUILTINS} == {getattr(errors, n) for n in errors.__all__}
    for cls, builtins in BUILTINS.items():
        assert issubclass(cls, XgppError), cls
        for b in builtins:
            assert issubclass(cls, b), (cls, b)
        assert cls.__doc__ and cls.__doc__.strip(), cls
    assert issubclass(UnitError, InputError) and issubclass(NotFoundError, InputError)
    assert issubclass(BundleFormatError, BundleError)
    assert issubclass(CatalogSecurityError, InputError)


def test_not_found_prints_its_message_unquoted():
    err = NotFoundError("dataset has no variable 'vpd'")
    assert str(err) == "dataset has no variable 'vpd'"  # a plain KeyError would add quotes
    with pytest.raises(KeyError):
        raise err


def _drivers() -> xr.Dataset:
    return xr.Dataset(
        {"tair": (("time", "lat", "lon"), np.zeros((2, 2, 2), np.float32), {"units": "degC"})},
        coords={"time": np.array(["2020-01-01", "2020-01-02"], "datetime64[ns]"),
                "lat": [10.5, 9.5], "lon": [0.5, 1.5]})


def test_missing_variable_is_an_input_error_and_still_a_key_and_value_error():
    with pytest.raises(NotFoundError, match=r"no variable 'vpd'") as info:
        check_inputs(_drivers(), PModelBaseline())
    assert isinstance(info.value, InputError | KeyError | ValueError)
    with pytest.raises(InputError, match=r"'zzz' is not one of xgpp's canonical variables"):
        harmonize(_drivers().rename(tair="zzz"))


def test_unknown_unit_is_a_unit_error():
    with pytest.raises(UnitError, match=r"'tair' has units 'furlongs'.*cannot be converted"):
        unit_conversion("furlongs", "tair")
    bad = _drivers()
    bad["tair"].attrs["units"] = "furlongs"
    try:
        harmonize(bad)
    except ValueError as err:  # the old contract keeps working
        assert isinstance(err, UnitError) and "harmonize variable 'tair'" in str(err)
    else:
        pytest.fail("harmonize accepted units 'furlongs' for tair")


def test_unknown_split_and_config_field_are_input_errors():
    with pytest.raises(InputError, match=r"unknown split 'nope:k=3'.*site-kfold"):
        parse_split("nope:k=3")
    with pytest.raises(UnknownOptionError, match="unknown TrainConfig field") as info:
        TrainConfig.from_dict({"max_epoch": 3})
    assert isinstance(info.value, TypeError)


def test_tampered_bundle_is_a_bundle_error(tmp_path):
    path = tmp_path / "bundle"
    PModelBaseline().save(str(path))
    meta = json.loads((path / "model.json").read_text())
    meta["sha256"] = "0" * 64
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"model.json was edited after it was saved"):
        load_model(str(path))
    with pytest.raises(ValueError, match="edited after it was saved"):
        load_model(str(path))


def test_incomplete_store_is_an_incomplete_store_error(tmp_path):
    ds = _drivers()
    ds.attrs["xgpp_complete"] = False
    url = str(tmp_path / "cube.zarr")
    ds.to_zarr(url, consolidated=False)
    with pytest.raises(IncompleteStoreError, match="unfinished store") as info:
        open_cube(url)
    assert info.value.url is not None and isinstance(info.value, ValueError)


def test_training_evaluation_and_world_inputs_raise_xgpp_errors():
    from xgpp.evaluate import pair_scores
    from xgpp.landcover import class_to_code, code_to_class
    from xgpp.synthetic import make_world

    with pytest.raises(errors.InputError, match=r"unknown IGBP code 'XYZ'; expected one of"):
        code_to_class(np.array(["ENF", "XYZ"]))
    with pytest.raises(errors.InputError, match="class numbers must lie in"):
        class_to_code(np.array([99]))
    with pytest.raises(errors.InputError, match="need at least 3 to score"):
        pair_scores(np.array([1.0, np.nan]), np.array([1.0, 2.0]))
    with pytest.raises(errors.UnknownOptionError, match="unknown world variant 'nope'"):
        make_world(resolution=10.0, variant="nope")
