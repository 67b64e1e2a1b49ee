"""Experiment reports: one Markdown file and one self-contained HTML page from the same sections.

``write_report(out_dir, title=..., sections=[Section(...), ...])`` writes ``report.md``
(figures referenced by relative path, tables as GitHub pipe tables) and ``report.html`` (figures
embedded as base64 ``data:`` URIs, tables as HTML tables, a little inline CSS; no external
assets, no JavaScript), so the HTML page can be mailed or archived on its own.

Section text is a small Markdown subset, converted here without extra dependencies: paragraphs,
``-``/``*`` bullet lists, ``1.`` numbered lists, ``#`` headings, ``**bold**``, ``*italic*``,
```code``` and ``[links](https://...)``.  Everything else is escaped and shown as text.
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from xgpp.errors import InputError

__all__ = ["Figure", "Section", "Table", "markdown_to_html", "write_report"]

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
         ".gif": "image/gif", ".svg": "image/svg+xml", ".webp": "image/webp"}


@dataclass(frozen=True)
class Figure:
    """A figure of a report section: an image file and its caption.

    A relative ``path`` is taken relative to the current directory, or else to the report's
    ``out_dir`` (where the experiment runner usually writes its PNGs).
    """

    path: str | Path
    caption: str = ""


@dataclass(frozen=True)
class Table:
    """A table of a report section.

    Cells that are strings are shown as given (format numbers yourself for full control);
    other numbers are formatted with ``fmt`` (a :func:`format` spec), NaN and ``None`` as "–".
    """

    caption: str
    columns: Sequence[str]
    rows: Sequence[Sequence[str | float | int | None]]
    fmt: str = ".3g"

    def cells(self) -> list[list[str]]:
        """The rows as text, checked against the column count."""
        out = []
        for i, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise InputError(f"table {self.caption!r}: row {i} has {len(row)} cells but "
                                 f"there are {len(self.columns)} columns "
                                 f"({list(self.columns)}).")
            out.append([_cell(v, self.fmt) for v in row])
        return out


@dataclass(frozen=True)
class Section:
    """A report section: heading, Markdown text, then its tables and figures."""

    heading: str
    text: str = ""
    tables: Sequence[Table] = field(default_factory=list)
    figures: Sequence[Figure] = field(default_factory=list)


def _cell(v, fmt: str) -> str:
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    try:
        x = float(v)
    except (TypeError, ValueError):
        return str(v)
    return "–" if math.isnan(x) else format(x, fmt)


def _numeric(text: str) -> bool:
    return re.fullmatch(r"[+\-−]?(\d[\d,]*\.?\d*|\.\d+)([eE][+\-]?\d+)?%?", text.strip()) is not None


# ------------------------------------------------------------------------------- Markdown -> HTML

_CODE = re.compile(r"`([^`\n]+)`")
_LINK = re.compile(r"\[([^\]\n]+)\]\(([^)\s]+)\)")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_ITALIC = re.compile(r"(?<![\w*])\*(?!\s)([^*\n]+?)(?<!\s)\*(?![\w*])")
_SAFE_URL = re.compile(r"^(https?://|mailto:|#|[\w./-]+$)", re.IGNORECASE)


def _inline(text: str) -> str:
    """One block's inline Markdown as escaped HTML (code spans are never formatted inside)."""
    out, pos = [], 0
    for m in _CODE.finditer(text):
        out.append(_inline_plain(text[pos:m.start()]))
        out.append(f"<code>{html.escape(m.group(1))}</code>")
        pos = m.end()
    out.append(_inline_plain(text[pos:]))
    return "".join(out)


def _inline_plain(text: str) -> str:
    links: list[str] = []

    def keep_link(m: re.Match) -> str:
        label, url = m.group(1), m.group(2)
        if not _SAFE_URL.match(url):  # e.g. javascript: -- show it as text
            return m.group(0)
        links.append(f'<a href="{html.escape(url, quote=True)}">{_emphasis(html.escape(label))}</a>')
        return f"\x00{len(links) - 1}\x00"

    text = _LINK.sub(keep_link, text)
    text = _emphasis(html.escape(text, quote=False))
    return re.sub("\x00(\\d+)\x00", lambda m: links[int(m.group(1))], text)


def _emphasis(escaped: str) -> str:
    escaped = _BOLD.sub(r"<strong>\1</strong>", escaped)
    return _ITALIC.sub(r"<em>\1</em>", escaped)


_BULLET = re.compile(r"^\s*[-*+]\s+(.*)$")
_NUMBER = re.compile(r"^\s*\d+[.)]\s+(.*)$")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def markdown_to_html(text: str, *, heading_offset: int = 2) -> str:
    """A small Markdown subset as HTML: paragraphs, lists, headings, bold, italic, code, links.

    Parameters
    ----------
    text : str
        Markdown; blocks are separated by blank lines, list items start with ``-``, ``*``,
        ``+`` or ``1.``; a line indented under an item continues it.
    heading_offset : int
        Added to a ``#`` heading's level (a ``#`` in section text becomes ``<h3>`` by default,
        below the section's own ``<h2>``).

    Returns
    -------
    str
        HTML with every ``<``, ``>`` and ``&`` of the text escaped.
    """
    blocks: list[str] = []
    para: list[str] = []
    items: list[str] = []
    kind = ""

    def flush() -> None:
        nonlocal para, items, kind
        if para:
            blocks.append(f"<p>{_inline(' '.join(para))}</p>")
        if items:
            tag = "ol" if kind == "ol" else "ul"
            lis = "".join(f"<li>{_inline(i)}</li>" for i in items)
            blocks.append(f"<{tag}>{lis}</{tag}>")
        para, items, kind = [], [], ""

    for line in text.splitlines():
        if not line.strip():
            flush()
            continue
        bullet, number, head = _BULLET.match(line), _NUMBER.match(line), _HEADING.match(line)
        if head:
            flush()
            level = min(6, len(head.group(1)) + heading_offset)
            blocks.append(f"<h{level}>{_inline(head.group(2))}</h{level}>")
        elif bullet or number:
            new_kind = "ul" if bullet else "ol"
            if para or (items and kind != new_kind):
                flush()
            kind = new_kind
            items.append((bullet or number).group(1))  # type: ignore[union-attr]  # (elif)
        elif items and line[:1].isspace():
            items[-1] += " " + line.strip()
        else:
            if items:
                flush()
            para.append(line.strip())
    flush()
    return "\n".join(blocks)


# ---------------------------------------------------------------------------------------- writers

_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       line-height: 1.55; color: #1d1d1f; background: #fff; margin: 0; }
main { max-width: 62rem; margin: 0 auto; padding: 1.5rem 1.25rem 4rem; }
h1 { font-size: 1.9rem; margin: 0.4rem 0 1rem; }
h2 { font-size: 1.4rem; margin-top: 2.4rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
h3, h4, h5, h6 { font-size: 1.1rem; margin-top: 1.4rem; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .9em;
       background: #f3f3f5; padding: .05rem .3rem; border-radius: 3px; }
a { color: #0b5cad; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1rem;
          font-size: .9rem; background: #f7f7f9; padding: .7rem 1rem; border-radius: 6px; }
dl.meta dt { font-weight: 600; } dl.meta dd { margin: 0; overflow-wrap: anywhere; }
nav.toc { font-size: .95rem; } nav.toc ol { padding-left: 1.3rem; }
table { border-collapse: collapse; margin: 1rem 0 1.6rem; font-size: .92rem; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: .35rem; }
th, td { border-bottom: 1px solid #e2e2e6; padding: .3rem .7rem; text-align: left; }
th { border-bottom: 2px solid #bbb; background: #fafafa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fbfbfd; }
figure { margin: 1.2rem 0 2rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .9rem; color: #444; margin-top: .35rem; }
"""


def _resolve(fig: Figure, out_dir: Path, heading: str) -> Path:
    p = Path(fig.path)
    for cand in (p, out_dir / p) if not p.is_absolute() else (p,):
        if cand.is_file():
            return cand
    where = f"{p}" + ("" if p.is_absolute() else f" (also looked in {out_dir / p})")
    raise FileNotFoundError(f"figure {where} of report section {heading!r} does not exist; "
                            "write the figure before the report, or drop it from the section.")


def _md_escape_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table, number: int) -> str:
    cells = table.cells()
    cols = [_md_escape_cell(str(c)) for c in table.columns]
    lines = [f"*Table {number}: {table.caption}*" if table.caption else f"*Table {number}*", "",
             "| " + " | ".join(cols) + " |"]
    numeric = [bool(cells) and all(_numeric(r[j]) or r[j] == "–" for r in cells)
               for j in range(len(cols))]
    lines.append("|" + "|".join("---:" if n else "---" for n in numeric) + "|")
    lines += ["| " + " | ".join(_md_escape_cell(c) for c in row) + " |" for row in cells]
    return "\n".join(lines)


def _html_table(table: Table, number: int) -> str:
    cells = table.cells()
    cap = f"Table {number}." + (f" {_inline(table.caption)}" if table.caption else "")
    head = "".join(f"<th scope=\"col\">{html.escape(str(c))}</th>" for c in table.columns)
    body = []
    for row in cells:
        tds = "".join(f'<td class="num">{html.escape(c)}</td>' if _numeric(c)
                      else f"<td>{html.escape(c)}</td>" for c in row)
        body.append(f"<tr>{tds}</tr>")
    return (f"<table>\n<caption>{cap}</caption>\n<thead><tr>{head}</tr></thead>\n"
            f"<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>")


def _data_uri(path: Path) -> str:
    mime = _MIME.get(path.suffix.lower())
    if mime is None:
        raise InputError(f"figure {path} has suffix {path.suffix!r}; the HTML report embeds "
                         f"only {sorted(_MIME)} images.")
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _anchor(i: int) -> str:
    return f"sec-{i + 1}"


def write_report(out_dir: str | Path, *, title: str, sections: Sequence[Section],
                 meta: Mapping[str, object] | None = None) -> tuple[Path, Path]:
    """Write ``out_dir/report.md`` and the self-contained ``out_dir/report.html``.

    Every figure is checked before anything is written, so a missing file leaves no half
    report behind.  Tables and figures are numbered through the report.

    Parameters
    ----------
    out_dir : str or Path
        Folder of the report (created if missing); Markdown figure links are relative to it.
    title : str
        Report title.
    sections : sequence of Section
        The sections, in order.
    meta : mapping, optional
        Facts about the run (command, versions, date, world, ...), shown at the top as a small
        definition list; values are shown with ``str``.

    Returns
    -------
    (Path, Path)
        The Markdown and HTML files written.

    Raises
    ------
    FileNotFoundError
        A figure file does not exist (the message names it and its section).
    ValueError
        A table row does not match its columns, or a figure is not an image the HTML can embed.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    figures = {id(f): _resolve(f, out_dir, s.heading) for s in sections for f in s.figures}
    for s in sections:  # fail on bad tables and figure types before writing anything
        for t in s.tables:
            t.cells()
        for f in s.figures:
            if figures[id(f)].suffix.lower() not in _MIME:
                _data_uri(figures[id(f)])

    md = [f"# {title}", ""]
    if meta:
        md += [f"- **{k}**: {v}" for k, v in meta.items()] + [""]
    body = [f"<h1>{html.escape(title)}</h1>"]
    if meta:
        items = "".join(f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>"
                        for k, v in meta.items())
        body.append(f'<dl class="meta">{items}</dl>')
    if len(sections) > 1:
        toc = "".join(f'<li><a href="#{_anchor(i)}">{html.escape(s.heading)}</a></li>'
                      for i, s in enumerate(sections))
        body.append(f'<nav class="toc"><strong>Contents</strong><ol>{toc}</ol></nav>')

    n_table = n_fig = 0
    for i, s in enumerate(sections):
        md += [f"## {s.heading}", ""]
        body.append(f'<section id="{_anchor(i)}">\n<h2>{html.escape(s.heading)}</h2>')
        if s.text.strip():
            md += [s.text.strip(), ""]
            body.append(markdown_to_html(s.text))
        for t in s.tables:
            n_table += 1
            md += [_md_table(t, n_table), ""]
            body.append(_html_table(t, n_table))
        for f in s.figures:
            n_fig += 1
            src = figures[id(f)]
            rel = Path(os.path.relpath(src.resolve(), out_dir.resolve())).as_posix()
            alt = f.caption or src.name
            md += [f"![{alt}]({rel})", "",
                   f"*Figure {n_fig}: {f.caption}*" if f.caption else f"*Figure {n_fig}*", ""]
            cap = f"Figure {n_fig}." + (f" {_inline(f.caption)}" if f.caption else "")
            body.append(f'<figure>\n<img src="{_data_uri(src)}" alt="{html.escape(alt)}">\n'
                        f"<figcaption>{cap}</figcaption>\n</figure>")
        body.append("</section>")

    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    md_path.write_text("\n".join(md).rstrip() + "\n", encoding="utf-8")
    page = ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            "<main>\n" + "\n".join(body) + "\n</main>\n</body>\n</html>\n")
    html_path.write_text(page, encoding="utf-8")
    return md_path, html_path
