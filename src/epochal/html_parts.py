"""The pieces of epochal's self-contained HTML pages (run and sweep reports).

No network and no scripts: styles inline, images embedded as data URIs, so a page
can be mailed or attached as it is. ``page`` is the HTML shell, ``html_table`` a
table (``Markup`` cells pass through unescaped, everything else is escaped).
"""

from __future__ import annotations

import base64
import datetime
import html
import math
from pathlib import Path
from typing import Any, Iterable

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; color: #222; padding: 0 1rem; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; } h2 { font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5rem 0; font-size: .9rem; }
th, td { border: 1px solid #ddd; padding: .25rem .6rem; text-align: left; } th { background: #f5f5f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f7f7f7; padding: .8rem; overflow-x: auto; font-size: .8rem; }
figure { margin: 1rem 0; } figcaption { font-size: .85rem; color: #555; } img { max-width: 100%; }
.badge { display: inline-block; padding: .1rem .5rem; border-radius: .3rem; color: white; font-weight: 600; }
.completed { background: #2a7d2a; } .failed { background: #b22; } .preempted { background: #c80; }
.gate_failed { background: #a0522d; }
.pruned { background: #a60; } .running, .unknown, .waiting, .interrupted { background: #777; }
.muted { color: #666; font-size: .85rem; }
"""


def page(title: str, sections: Iterable[str]) -> str:
    """A complete HTML document: ``sections`` are HTML fragments, placed in order."""
    generated = datetime.datetime.now().isoformat(timespec="seconds")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>\n" + "\n".join(sections)
            + f"\n<p class=\"muted\">written by epochal report, {generated}</p>\n</body></html>\n")


def section(heading: str, body: str) -> str:
    return f"<h2>{html.escape(heading)}</h2>\n{body}"


class Markup(str):
    """HTML a table cell shows as it is (a badge, a link); every other string is escaped."""


def cell(value: Any) -> str:
    """A table cell: numbers right-aligned to 4 significant digits, None as a dash, the rest escaped."""
    if isinstance(value, Markup):
        return f"<td>{value}</td>"
    if isinstance(value, bool) or value is None:
        return f"<td>{'–' if value is None else ('yes' if value else 'no')}</td>"
    if isinstance(value, (int, float)):
        text = f"{value:.4g}" if isinstance(value, float) and math.isfinite(value) else str(value)
        return f"<td class=\"num\">{text}</td>"
    return f"<td>{html.escape(str(value))}</td>"


def html_table(headers: list[str] | None, rows: list[list[Any]]) -> str:
    """A table; without headers the first column names each row."""
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>\n" if headers else ""
    body = "".join("<tr>" + "".join(cell(v) if i or headers else f"<th>{html.escape(str(v))}</th>"
                                     for i, v in enumerate(row)) + "</tr>\n" for row in rows)
    return f"<table>{head}{body}</table>"


def image_tag(path: Path, caption: str = "") -> str:
    """A PNG embedded as a data URI, in a figure with a caption."""
    data = base64.b64encode(path.read_bytes()).decode()
    alt = html.escape(caption or path.stem)
    return (f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{alt}\">"
            f"<figcaption>{alt}</figcaption></figure>")


def status_badge(status: str | None) -> str:
    status = status or "unknown"
    return f"<span class=\"badge {html.escape(status)}\">{html.escape(status)}</span>"
