"""The documentation's Python examples run as written.

Every ```python block of docs/quickstart.md and README.md is executed in order, one namespace
per file, in a fresh process whose working directory is an empty temporary folder: what a user
gets who pastes the blocks into a session.  A block that cannot run here (cloud URLs, a GPU,
archives that are not on this machine, hours of compute) is marked in the Markdown with
``<!-- skip-test -->`` (optionally ``<!-- skip-test: reason -->``) on the line just before its
fence; the tests count those blocks instead of running them.

The Sphinx build itself (warnings are errors) is ``make docs``, not part of ``make test``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "docs" / "quickstart.md"
README = ROOT / "README.md"

#: The quickstart runs at a tiny scale: its blocks together must finish within this [s].
QUICKSTART_SECONDS = 60.0

_OPEN = re.compile(r"^(`{3,}|~{3,})\s*\{?python\}?\s*$")
_SKIP = re.compile(r"^<!--\s*skip-test\s*(?::\s*(?P<reason>.*?))?\s*-->$")


@dataclass(frozen=True)
class Block:
    """One fenced python block of a Markdown file."""

    path: Path
    line: int  # 1-based line of the opening fence
    code: str
    skip: bool
    reason: str


def python_blocks(path: Path) -> list[Block]:
    """Return the ```python blocks of ``path`` in order, with their skip-test markers."""
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = _OPEN.match(lines[i].strip())
        if not m:
            i += 1
            continue
        fence, start = m.group(1), i
        j = i + 1
        while j < len(lines) and lines[j].strip() != fence:
            j += 1
        if j == len(lines):
            raise AssertionError(f"{path.name}:{start + 1}: python block is never closed")
        marker = _SKIP.match(lines[start - 1].strip()) if start > 0 else None
        blocks.append(Block(path, start + 1, textwrap.dedent("\n".join(lines[start + 1:j])),
                            marker is not None, (marker.group("reason") or "") if marker else ""))
        i = j + 1
    return blocks


def stray_markers(path: Path) -> list[int]:
    """Lines of skip-test markers that are not directly followed by a python fence."""
    lines = path.read_text().splitlines()
    return [n + 1 for n, text in enumerate(lines) if _SKIP.match(text.strip())
            and not (n + 1 < len(lines) and _OPEN.match(lines[n + 1].strip()))]


_RUNNER = """
import json, sys, time, traceback
blocks = json.load(open(sys.argv[1]))
namespace = {"__name__": "__main__"}
for b in blocks:
    t0 = time.perf_counter()
    try:
        exec(compile(b["code"], b["file"], "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        print(f"DOCS-BLOCK-FAILED {b['where']}", file=sys.stderr)
        sys.exit(1)
    print(f"DOCS-BLOCK-OK {b['where']} {time.perf_counter() - t0:.1f}s", file=sys.stderr)
"""


def run_blocks(blocks: list[Block], workdir: Path, timeout: float) -> float:
    """Execute ``blocks`` in order in one namespace in a fresh Python; return the wall time [s]."""
    spec = workdir.parent / f"{workdir.name}-blocks.json"
    # blank lines before the code make traceback line numbers those of the Markdown file
    spec.write_text(json.dumps([
        {"where": f"{b.path.relative_to(ROOT)}:{b.line}", "file": str(b.path.relative_to(ROOT)),
         "code": "\n" * b.line + b.code} for b in blocks]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("XGPP_")}
    env.setdefault("OMP_NUM_THREADS", "1")  # torch and dask threads share 2 cores
    env["MPLBACKEND"] = "Agg"
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", _RUNNER, str(spec)], cwd=workdir, env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise AssertionError(
            f"the documentation blocks ran over {timeout:.0f} s; blocks finished:\n"
            + "\n".join(line for line in (err.stderr or b"").decode(errors="replace").splitlines()
                        if line.startswith("DOCS-BLOCK-OK"))) from err
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, (
        f"a documentation block failed (exit {proc.returncode}):\n{proc.stderr[-6000:]}")
    done = [line for line in proc.stderr.splitlines() if line.startswith("DOCS-BLOCK-OK")]
    assert len(done) == len(blocks), f"only {len(done)} of {len(blocks)} blocks reported:\n" + \
        proc.stderr[-3000:]
    return elapsed


def test_block_parser_reads_fences_and_markers(tmp_path):
    md = tmp_path / "page.md"
    md.write_text("# t\n\n```python\nx = 1\n```\n\ntext\n<!-- skip-test: needs S3 -->\n"
                  "```python\nimport s3fs\n```\n\n```bash\nls\n```\n<!-- skip-test -->\n"
                  "```python\ny = 2\n```\n<!-- skip-test -->\n\nnot a fence\n")
    blocks = python_blocks(md)
    assert [(b.line, b.code, b.skip, b.reason) for b in blocks] == [
        (3, "x = 1", False, ""), (9, "import s3fs", True, "needs S3"), (17, "y = 2", True, "")]
    assert stray_markers(md) == [20]


@pytest.mark.parametrize("path", [QUICKSTART, README], ids=lambda p: p.name)
def test_every_python_block_compiles_and_every_marker_marks_one(path):
    blocks = python_blocks(path)
    assert blocks, f"{path.name} has no python blocks"
    for b in blocks:
        compile(b.code, f"{path.name}:{b.line}", "exec")
    assert stray_markers(path) == [], (
        f"{path.name}: skip-test markers at these lines are not right before a ```python fence")


def test_quickstart_runs_as_written_within_a_minute(tmp_path):
    blocks = python_blocks(QUICKSTART)
    skipped = [b.line for b in blocks if b.skip]
    assert skipped == [], f"the quickstart must run as written; skip-test blocks at {skipped}"
    assert len(blocks) >= 5, "the quickstart lost its steps"
    work = tmp_path / "quickstart"
    work.mkdir()
    elapsed = run_blocks(blocks, work, timeout=3 * QUICKSTART_SECONDS)
    print(f"quickstart ran in {elapsed:.0f} s (a hung one is stopped by the timeout)")
    # what the tutorial says it makes is there
    assert (work / "world" / "catalog.yaml").is_file()
    assert (work / "models" / "siftml" / "model.json").is_file()
    import xarray as xr

    out = xr.open_zarr(work / "out" / "prediction.zarr", consolidated=False)
    assert out.attrs["xgpp_complete"] is True
    assert float(out["gpp"].min()) >= 0.0


#: README's tour promises "about a minute on two cores"; a hung tour is stopped at twice this
#: [s] (speed itself is not asserted: the runners are shared)
README_SECONDS = 300.0


def test_readme_runs_as_written(tmp_path):
    blocks = python_blocks(README)
    runnable = [b for b in blocks if not b.skip]
    skipped = [b for b in blocks if b.skip]
    # the tour runs; what cannot run here (a bucket, the real archives) says why it is skipped
    assert any("train_from_catalog" in b.code for b in runnable), "README lost its tour"
    assert skipped and all(b.reason for b in skipped), (
        f"README skip-test markers must give a reason: lines {[b.line for b in skipped]}")
    assert len(runnable) + len(skipped) == len(blocks)
    work = tmp_path / "readme"
    work.mkdir()
    elapsed = run_blocks(runnable, work, timeout=2 * README_SECONDS)
    # speed is for benchmarks, not tests (the machine is shared): the timeout above only
    # stops a hung tour
    print(f"README blocks ran in {elapsed:.0f} s ({len(skipped)} skip-test blocks)")
    import xarray as xr

    for name in ("siftml", "siftml-seed1", "moe"):
        assert (work / "models" / name / "model.json").is_file(), name
    single = xr.open_zarr(work / "out" / "prediction.zarr", consolidated=False)
    assert single.attrs["xgpp_complete"] is True and float(single["gpp"].min()) >= 0.0
    ens = xr.open_zarr(work / "out" / "ensemble.zarr", consolidated=False)
    assert sorted(ens.data_vars) == ["gpp", "gpp_std"] and ens.attrs["xgpp_complete"] is True
    assert float(ens["gpp_std"].min()) >= 0.0 and float(ens["gpp_std"].max()) > 0.0
    moe = json.loads((work / "models" / "moe" / "model.json").read_text())
    assert {"gpp", "sif"} <= set(moe["outputs"])


# --------------------------------------------------------------------------- the API page

API_PAGE = ROOT / "docs" / "api.rst"
#: Modules whose every ``__all__`` name docs/api.rst must list.
API_MODULES = ("xgpp.catalog", "xgpp.io", "xgpp.synthetic", "xgpp.train", "xgpp.models",
               "xgpp.predict", "xgpp.evaluate", "xgpp.splits", "xgpp.cluster", "xgpp.variables",
               "xgpp.plots", "xgpp.experiment", "xgpp.report", "xgpp.errors")
#: Public names left off the API page for now, and why (their docstrings break the build).
API_PENDING: dict[str, str] = {}


def api_page_entries() -> list[str]:
    """Full dotted names of the autosummary entries of docs/api.rst, in order."""
    entries: list[str] = []
    module, in_summary = None, False
    for line in API_PAGE.read_text().splitlines():
        if m := re.match(r"^\.\. currentmodule:: (\S+)", line):
            module = m.group(1)
        elif line.startswith(".. autosummary::"):
            in_summary = True
        elif in_summary and (m := re.match(r"^ {3}~?([A-Za-z_][\w.]*)\s*$", line)):
            entries.append(f"{module}.{m.group(1)}")
        elif line and not line.startswith(" "):
            in_summary = False
    return entries


def test_api_page_lists_every_public_name_and_accessor_method():
    import importlib

    import xarray as xr

    documented = set(api_page_entries())
    missing = []
    for module_name in API_MODULES:
        module = importlib.import_module(module_name)
        for attr in module.__all__:
            full = f"{module_name}.{attr}"
            if full in API_PENDING:
                continue
            # constants are documented where they are defined (e.g. xgpp.train.methods.METHODS)
            if full not in documented and not any(
                    n.startswith(module_name + ".") and n.endswith("." + attr) for n in documented):
                missing.append(full)
    assert not missing, f"docs/api.rst does not list {missing}: add them to its autosummary"
    import xgpp  # noqa: F401  (registers ds.gpp)

    accessor = type(xr.Dataset().gpp)
    methods = [n for n in dir(accessor) if not n.startswith("_") and callable(getattr(accessor, n))]
    absent = [m for m in methods if f"xarray.Dataset.gpp.{m}" not in documented]
    assert methods and not absent, f"docs/api.rst does not list Dataset.gpp.{absent}"


def test_every_api_page_entry_exists():
    import importlib

    import xgpp  # noqa: F401

    broken = []
    entries = api_page_entries()
    assert len(entries) > 50, "docs/api.rst was not parsed"
    for full in entries:
        parts = full.split(".")
        for i in range(len(parts) - 1, 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            try:
                for p in parts[i:]:
                    obj = getattr(obj, p)
            except AttributeError:
                broken.append(full)
            break
        else:
            broken.append(full)
    assert not broken, f"docs/api.rst lists names that do not exist: {broken}"
    for full in API_PENDING:
        module, _, attr = full.rpartition(".")
        assert hasattr(importlib.import_module(module), attr), f"{full} no longer exists: " \
            "drop it from API_PENDING"
