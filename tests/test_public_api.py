"""Every public name of every xgpp module: importable, documented, inspectable, and the cheap
ones called.

The package is walked with :mod:`pkgutil`, so a new module is covered without editing this
file.  "Documented" means a docstring of its own (a dataclass's generated ``Name(a, b)`` does
not count) for modules, classes, functions and every public method and property; a constant
is documented by a comment on or above its assignment (``#:`` is what Sphinx shows).  A
parameter named in a ``Parameters`` section must exist in the signature: that is the drift a
renamed argument leaves behind.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import inspect
import json
import pkgutil
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from test_docs import api_page_entries  # the one parser of docs/api.rst

import xgpp
from xgpp.errors import InputError, NotFoundError

ROOT = Path(__file__).resolve().parents[1]
API_PAGE = ROOT / "docs" / "api.rst"

MODULES = ["xgpp", *sorted(m.name for m in pkgutil.walk_packages(xgpp.__path__, "xgpp."))]
#: Modules without ``__all__``, and why.  Every other module must declare its public names.
NO_ALL = {
    "xgpp._version": "holds __version__ only, re-exported by xgpp",
    "xgpp.cli": "the console script; its interface is the command line",
    # method plug-ins: importing the file registers it in xgpp.train.methods.METHODS
    "xgpp.train.methods.ec_only": "method plug-in",
    "xgpp.train.methods.moe": "method plug-in",
    "xgpp.train.methods.pmodel": "method plug-in",
    "xgpp.train.methods.sif_only": "method plug-in",
    "xgpp.train.methods.sif_only_global": "method plug-in",
    "xgpp.train.methods.single_task": "method plug-in",
}
#: Public constants with no comment on or above their assignment yet (their modules are not
#: this test's to edit).  A name leaves this table when its comment is written; the test below
#: fails if a listed name is documented already or no longer exists.
UNDOCUMENTED_CONSTANTS = {
    "xgpp.io._grid.GridLike", "xgpp.io._paths.PathsLike", "xgpp.io._time.FREQS",
    "xgpp.landcover.IGBP_NAMES", "xgpp.models._format.FORMAT_NAME",
    "xgpp.models._format.METADATA_FILE", "xgpp.models._format.WEIGHTS_FILE",
    "xgpp.plots.GPP_UNITS", "xgpp.plots.SIF_UNITS", "xgpp.plots.TOTAL_UNITS",
    "xgpp.train.methods.siftml.SITE_SECTIONS",
}


def _module(name: str) -> types.ModuleType:
    return importlib.import_module(name)


PUBLIC = [(m, n) for m in MODULES for n in getattr(_module(m), "__all__", ())]
WITH_ALL = [m for m in MODULES if hasattr(_module(m), "__all__")]


def _is_constant(obj) -> bool:
    return not (inspect.ismodule(obj) or inspect.isclass(obj) or inspect.isroutine(obj)
                or isinstance(obj, functools.partial))


def _own_doc(obj) -> str:
    """The docstring ``obj`` itself carries (not one inherited, not a dataclass's repr)."""
    doc = vars(obj).get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    if not doc or (inspect.isclass(obj) and doc.startswith(f"{obj.__name__}(")):
        return ""
    return doc


def _documented_parameters(doc: str) -> list[str]:
    """Names in a numpydoc ``Parameters`` section (each unindented line is a header)."""
    text = inspect.cleandoc(doc)
    m = re.search(r"^Parameters\n-+\n(.*?)(?=^\S[^\n]*\n-{3,}\n|\Z)", text, re.S | re.M)
    if not m:
        return []
    names = []
    for line in m.group(1).splitlines():
        if line and not line[0].isspace():
            names += [n.strip().lstrip("*") for n in line.split(" : ")[0].split(",")]
    return names


def _signature_problems(full: str, obj) -> list[str]:
    """Why ``obj``'s signature cannot be read, or which documented parameters it lacks."""
    try:
        params = inspect.signature(obj).parameters
    except ValueError:
        # classes built on a C type (exceptions, warnings) have no Python signature
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            return []
        return [f"{full}: no signature"]
    doc = _own_doc(obj) or (inspect.isclass(obj) and _own_doc(obj.__init__)) or ""
    extra = [p for p in _documented_parameters(doc) if p not in params]
    return [f"{full}: documents {extra}, which its signature {list(params)} lacks"] if extra \
        else []


@functools.cache
def _commented_assignments(module_name: str) -> frozenset[str]:
    """Top-level names of ``module_name`` assigned with a comment on or just above the line."""
    source = inspect.getsource(_module(module_name))
    lines = source.splitlines()
    body = ast.parse(source).body
    out = set()
    for i, node in enumerate(body):
        if isinstance(node, ast.Assign):
            targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            targets = [node.target.id]
        else:
            continue
        above = lines[node.lineno - 2].strip() if node.lineno >= 2 else ""
        nxt = body[i + 1] if i + 1 < len(body) else None
        docstring_after = (isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                           and isinstance(nxt.value.value, str))
        if above.startswith("#") or "#" in lines[node.lineno - 1] or docstring_after:
            out.update(targets)
    return frozenset(out)


def _constant_is_documented(module_name: str, name: str) -> bool:
    """Whether the module that assigns ``name`` (this one or one it re-exports from) says what
    it is."""
    obj = getattr(_module(module_name), name)
    for candidate in MODULES:
        mod = _module(candidate)
        if candidate == module_name or vars(mod).get(name, _MISSING) is obj:
            if name in _commented_assignments(candidate):
                return True
    return False


_MISSING = object()


# --------------------------------------------------------------------------- the walk itself


def test_walk_finds_every_module_and_each_declares_its_public_names():
    assert len(MODULES) > 60 and {"xgpp.catalog", "xgpp.io.tropomi", "xgpp.train.loop",
                                  "xgpp.models.moe", "xgpp.synthetic.world"} <= set(MODULES)
    missing = [m for m in MODULES if m not in WITH_ALL and m not in NO_ALL]
    assert not missing, f"{missing} define no __all__: list their public names"
    stale = [m for m in NO_ALL if m not in MODULES or m in WITH_ALL]
    assert not stale, f"NO_ALL lists {stale}, which now declare __all__ or no longer exist"


@pytest.mark.parametrize("module_name", WITH_ALL)
def test_every_name_in_all_exists_once(module_name):
    module = _module(module_name)
    names = list(module.__all__)
    assert all(isinstance(n, str) for n in names), names
    assert len(names) == len(set(names)), f"{module_name}.__all__ repeats a name"
    absent = [n for n in names if not hasattr(module, n)]
    assert not absent, f"{module_name}.__all__ names {absent}, which the module lacks"
    assert _own_doc(module), f"{module_name} has no module docstring"


@pytest.mark.parametrize("module_name", WITH_ALL)
def test_every_public_name_is_documented_and_its_signature_matches_its_docstring(module_name):
    module = _module(module_name)
    problems = []
    for name in module.__all__:
        obj, full = getattr(module, name), f"{module_name}.{name}"
        if _is_constant(obj):
            if name.startswith("__"):
                continue
            documented = _constant_is_documented(module_name, name)
            if full in UNDOCUMENTED_CONSTANTS:
                if documented:
                    problems.append(f"{full} is documented now: drop it from "
                                    "UNDOCUMENTED_CONSTANTS")
            elif not documented:
                problems.append(f"{full}: constant without a comment saying what it is")
            continue
        if not _own_doc(obj):
            problems.append(f"{full}: no docstring")
        if inspect.ismodule(obj):
            continue
        problems += _signature_problems(full, obj)
        if not inspect.isclass(obj):
            continue
        for attr, member in vars(obj).items():
            if attr.startswith("_"):
                continue
            func = member.fget if isinstance(member, property) else getattr(member, "__func__",
                                                                              member)
            if not (inspect.isfunction(func) or isinstance(member, property)):
                continue
            if not _own_doc(func):
                problems.append(f"{full}.{attr}: no docstring")
            elif inspect.isfunction(func):
                problems += _signature_problems(f"{full}.{attr}", func)
    assert not problems, "\n".join(problems)


def test_undocumented_constants_table_names_real_constants():
    for full in UNDOCUMENTED_CONSTANTS:
        module_name, _, name = full.rpartition(".")
        assert name in _module(module_name).__all__, f"{full} is no longer public"
        assert _is_constant(getattr(_module(module_name), name)), full


def test_docstring_parameter_parser_reads_numpydoc_sections():
    doc = """Do it.

    Parameters
    ----------
    a, b : float
        Two numbers [m].
    *options : Any
        More.

    Returns
    -------
    c : float
        The sum.
    """
    assert _documented_parameters(doc) == ["a", "b", "options"]
    assert _signature_problems("f", lambda a, b, *options: None) == []


# --------------------------------------------------------------------------- the top level


@pytest.mark.parametrize("name", xgpp.__all__)
def test_every_top_level_name_resolves_and_is_on_the_api_page(name):
    value = getattr(xgpp, name)
    assert name in dir(xgpp)
    api = API_PAGE.read_text()
    if name == "__version__":
        from importlib.metadata import version

        assert value == version("xgpp") and re.fullmatch(r"\d+\.\d+\.\d+\S*", value)
        return
    home = xgpp._LAZY[name]
    if inspect.ismodule(value):
        assert value is _module(f"xgpp.{name}") and home == f"xgpp.{name}"
        assert f".. automodule:: xgpp.{name}\n" in api, f"docs/api.rst has no section for {name}"
    else:
        assert value is getattr(_module(home), name)
        # listed under "Top level" (xgpp.NAME) or in its module's section (e.g. WorldConfig)
        entries = set(api_page_entries())
        assert f"xgpp.{name}" in entries or f"{home}.{name}" in entries, \
            f"docs/api.rst lists neither xgpp.{name} nor {home}.{name}"


def test_unknown_top_level_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        _ = xgpp.trian


@pytest.mark.parametrize("name", ["train", "predict"])
def test_callable_modules_call_their_function(name):
    module = getattr(xgpp, name)
    function = getattr(module, name)
    assert inspect.isfunction(function) and callable(module)
    # the module forwards exactly: the same bad call fails the same way
    with pytest.raises(TypeError) as via_module:
        module(1, 2, 3, 4, 5)
    with pytest.raises(TypeError) as via_function:
        function(1, 2, 3, 4, 5)
    assert str(via_module.value) == str(via_function.value)
    assert f"{name}()" in str(via_function.value)


def test_calling_the_cluster_module_runs_cluster():
    from xgpp.cluster import cluster

    call = inspect.signature(type(xgpp.cluster).__call__).parameters
    assert list(call)[1:] == list(inspect.signature(cluster).parameters)
    for entry in (xgpp.cluster, cluster):  # a context manager: the kind is checked on entry
        with pytest.raises(InputError, match="unknown cluster kind 'no-such-kind': expected one "
                                             r"of \['address', 'cuda', 'gateway', 'local'\]"):
            with entry("no-such-kind"):
                pass  # pragma: no cover


#: Parameters of a plain function its accessor method does not offer yet (xgpp/accessor.py is
#: not this test's to edit); the test fails once the accessor catches up, so the entry goes.
ACCESSOR_LAGS = {"to_zarr": ["retries"]}


def test_accessor_mirrors_the_plain_functions_and_teaches_about_the_gpp_variable():
    from xgpp.predict import predict, write_prediction
    from xgpp.train import train

    accessor = type(xr.Dataset().gpp)
    for method, function in [("predict", predict), ("to_zarr", write_prediction)]:
        mine = list(inspect.signature(getattr(accessor, method)).parameters)[1:]
        theirs = list(inspect.signature(function).parameters)[1:]
        lag = ACCESSOR_LAGS.get(method, [])
        assert mine == [p for p in theirs if p not in lag], \
            f"ds.gpp.{method}{mine} drifted from {function.__name__}{theirs}"
    named = [p for p, v in inspect.signature(accessor.train).parameters.items()
             if v.kind is inspect.Parameter.KEYWORD_ONLY]
    assert named and set(named) <= set(inspect.signature(train).parameters)
    ds = xr.Dataset({"gpp": ("x", [1.0, 2.0])})
    with pytest.raises(AttributeError, match=r"ds\['gpp'\]"):
        _ = ds.gpp.values


def test_accessor_check_names_the_missing_input():
    from xgpp.models.baselines import PModelBaseline

    with pytest.raises(NotFoundError, match=r"no variable 'tair'.*Inputs: \['tair', 'vpd'"):
        xr.Dataset().gpp.check(PModelBaseline())
    assert issubclass(NotFoundError, InputError)


# --------------------------------------------------------------------------- configuration records


def _default_configs():
    seen = {}
    for module_name, name in PUBLIC:
        obj = getattr(_module(module_name), name)
        if (inspect.isclass(obj) and dataclasses.is_dataclass(obj) and hasattr(obj, "to_dict")
                and hasattr(obj, "from_dict")
                and all(f.default is not dataclasses.MISSING
                        or f.default_factory is not dataclasses.MISSING
                        for f in dataclasses.fields(obj) if f.init)):
            seen[obj.__qualname__] = obj
    return [seen[k] for k in sorted(seen)]


DEFAULT_CONFIGS = _default_configs()


def test_configuration_records_are_found():
    names = {c.__name__ for c in DEFAULT_CONFIGS}
    assert {"TrainConfig", "WorldConfig", "MLPConfig", "ExperimentConfig", "FeatureConfig",
            "SiteKFold"} <= names, names


@pytest.mark.parametrize("cls", DEFAULT_CONFIGS, ids=lambda c: c.__name__)
def test_configuration_records_round_trip_through_json_and_are_frozen(cls):
    config = cls()
    as_json = json.dumps(config.to_dict())
    assert cls.from_dict(json.loads(as_json)) == config
    first = dataclasses.fields(cls)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(config, first, getattr(config, first))


# --------------------------------------------------------------------------- cheap calls


def test_igbp_codes_and_classes_round_trip():
    from xgpp.landcover import IGBP_CODES, class_to_code, code_to_class

    classes = code_to_class(list(IGBP_CODES))
    np.testing.assert_array_equal(classes, np.arange(len(IGBP_CODES)))
    assert list(class_to_code(classes)) == list(IGBP_CODES)
    with pytest.raises(ValueError, match=r"unknown IGBP code .*'XYZ'.*expected one of \['WAT', 'ENF'"):
        code_to_class(["ENF", "XYZ"])


def test_cell_areas_add_up_to_the_earth():
    from xgpp.evaluate import cell_area

    lat, lon = np.arange(-85.0, 90.0, 10.0), np.arange(-175.0, 180.0, 10.0)
    area = cell_area(xr.DataArray(lat, dims="lat", coords={"lat": lat}),
                     xr.DataArray(lon, dims="lon", coords={"lon": lon}))
    assert area.dims == ("lat", "lon") and area.shape == (18, 36)
    np.testing.assert_allclose(float(area.sum()), 4 * np.pi * 6371e3**2, rtol=1e-5)
    assert float(area.isel(lat=9).mean()) > 10 * float(area.isel(lat=0).mean())  # equator/pole


def test_pair_scores_of_a_perfect_and_a_biased_estimate():
    from xgpp.evaluate import pair_scores

    obs = np.array([1.0, 2.0, 3.0, 4.0])
    perfect = pair_scores(obs, obs)
    assert perfect["n"] == 4 and perfect["r2"] == 1.0 and perfect["rmse"] == 0.0
    shifted = pair_scores(obs + 1.0, obs)
    assert shifted["bias"] == pytest.approx(1.0) and shifted["rmse"] == pytest.approx(1.0)
    assert shifted["slope"] == pytest.approx(1.0) and shifted["pearson_r2"] == pytest.approx(1.0)


def test_time_steps_cover_the_range_and_are_recognised():
    from xgpp.io._time import infer_freq, step_range

    steps = step_range("2019-01-01", "2019-02-01", "8D")
    assert [str(t.date()) for t in steps] == ["2019-01-01", "2019-01-09", "2019-01-17",
                                              "2019-01-25"]
    assert infer_freq(steps) == "8D"
    assert infer_freq(step_range("2019-01-01", "2019-12-01", "MS")) == "MS"


def test_any_string_dtype_becomes_a_unicode_array():
    from xgpp._strings import as_str

    out = as_str(np.array(["US-Ha1", "DE-Tha"], dtype=np.dtypes.StringDType()))
    assert out.dtype.kind == "U" and list(out) == ["US-Ha1", "DE-Tha"]
    assert list(as_str(np.array([b"FR-Pue"], dtype=object))) == ["FR-Pue"]


def test_cluster_kinds_resolve_without_starting_anything():
    from xgpp.cluster import BACKENDS, resolve_kind

    assert resolve_kind("tcp://10.0.0.5:8786") == ("address", {"address": "tcp://10.0.0.5:8786"})
    assert {"local", "gateway", "cuda", "address"} <= set(BACKENDS)


# --------------------------------------------------------------------------- import and CLI


def test_import_is_light():
    code = ("import sys, xgpp; heavy = [m for m in ('torch', 'distributed', 'dask_gateway', "
            "'s3fs', 'dask_cuda') if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import xgpp pulled in {out.stdout.strip()}"


def test_cli_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "xgpp.cli", "--help"], capture_output=True,
                         text=True, check=True)
    for cmd in ("world", "train", "predict", "demo", "experiment"):
        assert re.search(rf"^\W*\s{cmd}\s", out.stdout, re.M), f"--help does not list {cmd}"
