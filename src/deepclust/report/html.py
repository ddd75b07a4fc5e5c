"""``report.html``: one self-contained page (inline CSS, no scripts, no network) that shows the
PNGs written beside it by relative file name, so the folder can be moved or zipped as a whole."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

__all__ = ["Figure", "Section", "render_html", "write_html"]

_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.25em; margin-top: 1.8em;
       border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.7em; text-align: left; vertical-align: top; }
th { background: #f5f5f5; font-weight: 600; }
figure { margin: 0.8em 0 1.6em; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; margin-top: 0.3em; }
.note { color: #666; font-size: 0.9em; }
"""


@dataclass
class Figure:
    """A PNG beside the page and its caption."""

    file: str
    caption: str
    alt: str = ""


@dataclass
class Section:
    """A titled group of figures with optional text above them."""

    title: str
    figures: list[Figure] = field(default_factory=list)
    text: str = ""


def _table(rows: Sequence[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{escape(str(k))}</th><td>{escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def render_html(
    title: str,
    subtitle: str,
    summary: Sequence[tuple[str, Any]],
    sections: Sequence[Section],
    notes: Sequence[str] = (),
) -> str:
    """The page as a string."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="sub">{escape(subtitle)}</p>',
        "<h2>Summary</h2>",
        _table(summary),
    ]
    for sec in sections:
        parts.append(f'<h2 id="{escape(sec.title.lower().replace(" ", "-"))}">{escape(sec.title)}</h2>')
        if sec.text:
            parts.append(f"<p>{escape(sec.text)}</p>")
        for fig in sec.figures:
            parts.append(
                f'<figure><img src="{escape(fig.file)}" alt="{escape(fig.alt or fig.caption)}">'
                f"<figcaption>{escape(fig.caption)}</figcaption></figure>"
            )
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f'<li class="note">{escape(n)}</li>' for n in notes) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_html(path: Path, *args: Any, **kwargs: Any) -> Path:
    """Write :func:`render_html`'s page to ``path`` (UTF-8)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(*args, **kwargs), encoding="utf-8")
    return path
