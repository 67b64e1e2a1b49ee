"""xgpp.report: one Markdown file and one self-contained HTML page from the same sections."""

from __future__ import annotations

import base64
import html
import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from xgpp.report import Figure, Section, Table, markdown_to_html, write_report  # noqa: E402


@pytest.fixture
def figures(tmp_path):
    """Two real PNGs in a sub-folder of the report folder."""
    paths = []
    for i, colour in enumerate(("tab:green", "tab:red")):
        fig, ax = plt.subplots(figsize=(2, 1.5))
        ax.plot([0, 1], [i, 1 - i], color=colour)
        path = tmp_path / "out" / "figs" / f"f{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=50)
        plt.close(fig)
        paths.append(path)
    return paths


def sections(figures):
    scores = Table("Site scores (R2 [1], RMSE [gC m-2 d-1])", ["method", "R2", "RMSE", "note"],
                   [["SIFTML", 0.81234, 1.5, "a|b"], ["MLP", "0.70", float("nan"), None]])
    extra = Table("Seeds", ["seed", "epochs"], [[0, 12], [1, 15]])
    return [
        Section("Setup", "World with **3** seeds and `lr=1e-3`.\n\nChecks that 2 < 3 & "
                "<script>alert(1)</script> stays text.\n\n- one\n- two, see "
                "[Jung 2020](https://doi.org/10.5194/bg-17-1343-2020)",
                tables=[scores], figures=[Figure(figures[0], "Mean GPP <2015-2019>")]),
        Section("Results", "Bias by quintile.", tables=[extra],
                figures=[Figure("figs/f1.png", "Bias")]),  # relative to out_dir
    ]


def test_report_writes_markdown_and_self_contained_html(tmp_path, figures):
    out = tmp_path / "out"
    meta = {"command": "xgpp experiment --world tiny", "xgpp": "0.1", "date": "2026-12-01"}
    md_path, html_path = write_report(out, title="Twin-world experiment", sections=sections(figures),
                                      meta=meta)
    assert (md_path, html_path) == (out / "report.md", out / "report.html")
    page = html_path.read_text(encoding="utf-8")

    # self-contained: every src is a data URI holding the figure's bytes, every href internal
    # or web, no scripts, no external style sheets
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == 2 and all(s.startswith("data:image/png;base64,") for s in srcs)
    for src, path in zip(srcs, figures, strict=True):
        assert base64.b64decode(src.split(",", 1)[1]) == path.read_bytes()
    hrefs = re.findall(r'href="([^"]*)"', page)
    assert hrefs and all(h.startswith(("#", "https://")) for h in hrefs), hrefs
    assert "<script" not in page and "<link" not in page and "<style>" in page

    # text escaped, Markdown converted
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "2 &lt; 3 &amp;" in page
    assert "<strong>3</strong>" in page and "<code>lr=1e-3</code>" in page
    assert "<li>one</li>" in page
    assert '<a href="https://doi.org/10.5194/bg-17-1343-2020">Jung 2020</a>' in page
    assert "Mean GPP &lt;2015-2019&gt;" in page  # captions escaped too

    # every table cell, formatted (default .3g for floats, "–" for NaN and None)
    tables = [
        ([html.unescape(c) for c in re.findall(r"<th(?: [^>]*)?>(.*?)</th>", t)],
         [[html.unescape(c) for c in re.findall(r"<td(?: [^>]*)?>(.*?)</td>", row)]
          for row in re.findall(r"<tr><td.*?</tr>", t)])
        for t in re.findall(r"<table>.*?</table>", page, re.S)
    ]
    assert tables == [
        (["method", "R2", "RMSE", "note"], [["SIFTML", "0.812", "1.5", "a|b"],
                                            ["MLP", "0.70", "–", "–"]]),
        (["seed", "epochs"], [["0", "12"], ["1", "15"]]),
    ]
    assert "Table 1." in page and "Table 2." in page and "Figure 2." in page
    for k, v in meta.items():
        assert f"<dt>{k}</dt><dd>{html.escape(v)}</dd>" in page

    md = md_path.read_text(encoding="utf-8")
    assert md.startswith("# Twin-world experiment\n")
    assert "](figs/f0.png)" in md and "](figs/f1.png)" in md  # relative to the report
    assert "| method | R2 | RMSE | note |" in md
    assert "| SIFTML | 0.812 | 1.5 | a\\|b |" in md  # pipe in a cell escaped
    assert "|---|---:|---:|---|" in md  # numeric columns right-aligned
    assert "- **command**: xgpp experiment --world tiny" in md
    assert "## Results" in md and "World with **3** seeds" in md


def test_missing_figure_is_named_and_nothing_is_written(tmp_path, figures):
    out = tmp_path / "out"
    bad = [Section("Maps", figures=[Figure(out / "figs" / "nope.png", "gone")])]
    with pytest.raises(FileNotFoundError, match=r"nope\.png of report section 'Maps'"):
        write_report(out, title="t", sections=bad)
    assert not (out / "report.md").exists() and not (out / "report.html").exists()


def test_table_rows_must_match_columns(tmp_path):
    bad = [Section("S", tables=[Table("scores", ["a", "b"], [[1, 2], [3]])])]
    with pytest.raises(ValueError, match=r"table 'scores': row 1 has 1 cells but there are 2"):
        write_report(tmp_path, title="t", sections=bad)


def test_markdown_subset():
    out = markdown_to_html("# Head\n\nA *b* **c** `d<e>`\n\n1. x\n2. y\n\n"
                           "[bad](javascript:alert(1)) and [ok](#sec-1)")
    assert "<h3>Head</h3>" in out
    assert "<p>A <em>b</em> <strong>c</strong> <code>d&lt;e&gt;</code></p>" in out
    assert "<ol><li>x</li><li>y</li></ol>" in out
    assert 'href="javascript' not in out and '<a href="#sec-1">ok</a>' in out
