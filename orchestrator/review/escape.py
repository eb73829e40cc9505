"""Escaping of text that comes from manifests or the build history, for each place it lands.

A manifest or a `history.jsonl` line is data anyone with write access to a branch can shape, and
what the tool writes from it is posted by CI (the pull-request comment) or opened in a browser
(the report). Every such string goes through one of these helpers; the structure the tool writes
itself (``<details>``, table pipes, ``<br>``, ``<script>``) never does.

- `md`: GitHub-flavoured Markdown inline text (a table cell, a list item). One line; no raw HTML,
  link, image, emphasis, code span, heading, list, blockquote, strike-through, math, table pipe,
  autolink, @-mention or issue reference can come out of it. Characters harmless where they
  stand stay as they are (`_` inside a word, `>` after a non-space, parentheses not after `]`),
  so ordinary names and change lines read as before.
- `code`: a name shown as an inline code span when it is plainly safe there, else as `md` text.
- `md_html`: text inside a raw-HTML block of the Markdown (``<summary>``), where GitHub does not
  parse Markdown: HTML escaping, Markdown punctuation as numeric entities (plain text either way)
  and the same defanging of links, mentions and issue references.
- `html_text`: text or an attribute value of an HTML page.
- `script_json`: a value embedded as JSON inside ``<script>``: no string in it can end, comment
  out or open a script (``<``, ``>``, ``&``, U+2028, U+2029 as ``\\u`` escapes); it parses back
  to the same value.
"""

from __future__ import annotations

import html
import json
import re
import unicodedata
from typing import Any

ZWSP = "\u200b"  # a zero-width space: breaks an autolink or a mention, shows nothing
ZWSP_ENTITY = "&#8203;"  # how it is written, so that it shows in the raw comment
ALWAYS = frozenset("\\`*[]#!~|$")  # Markdown punctuation escaped wherever it stands
LEAD = frozenset("-+=(")  # block or link starters, escaped when the text begins with them
HTML_PUNCT = frozenset("\\`*[]()#!~|$")  # as numeric entities in a raw-HTML block
CODE_SAFE = re.compile(r"[A-Za-z0-9_.:/+=,-]+")
ORDERED = re.compile(r"\d{1,9}([.)])(?=\s|$)")
DEFANG = (
    (re.compile(r"#(?=\d)"), "#" + ZWSP),  # `#12` would cross-reference issue 12
    (re.compile(r"://"), ZWSP + "://"),  # `https://x` would be autolinked
    (re.compile(r"(?i)(?<=www)\."), ZWSP + "."),  # `www.x` too
    (re.compile(r"@"), "@" + ZWSP),  # `@someone` would notify them; `a@b.c` is a mailto link
)


def one_line(text: str) -> str:
    """Line breaks (CR, LF, U+2028/2029, NEL, form feeds) and other control characters as
    spaces: nothing from a manifest can start a new line, a heading, or a blank line that ends
    a folded block."""
    return "".join(" " if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch for ch in text)


def _defanged(text: object) -> str:
    """``text`` on one line, a zero-width space in ``https://``, ``www.``, ``@x`` and ``#12``:
    the same plain text to read, never an autolink, a mention or an issue reference."""
    s = one_line(str(text))
    for pattern, repl in DEFANG:
        s = pattern.sub(repl, s)
    return s


def _intraword(s: str, i: int) -> bool:
    """An `_` between two letters or digits (`b1_s128`): it cannot open or close emphasis."""
    return 0 < i < len(s) - 1 and s[i - 1].isalnum() and s[i + 1].isalnum()


def _md_char(s: str, i: int) -> str:
    ch = s[i]
    prev = s[i - 1] if i else ""
    if ch == "&":
        return "&amp;"
    if ch == "<":
        return "&lt;"
    if ch == ">":  # with no `<` left, only a blockquote marker: at the start or after a space
        return "&gt;" if not prev or prev.isspace() else ch
    if ch == "_":
        return ch if _intraword(s, i) else "\\_"
    if ch in ALWAYS or (i == 0 and ch in LEAD) or (ch == "(" and prev == "]"):
        return "\\" + ch  # and `](` never stands in the text, even escaped
    return ZWSP_ENTITY if ch == ZWSP else ch


def md(text: object) -> str:
    """``text`` as plain GitHub-flavoured Markdown inline text on one line (see the module)."""
    s = _defanged(text)
    body = s.lstrip(" ")
    chars = [_md_char(body, i) for i in range(len(body))]
    ordered = ORDERED.match(body)  # `1. x` / `1) x` would start a list after the tool's `- `
    if ordered:
        chars[ordered.end() - 1] = "\\" + ordered.group(1)
    # leading spaces as entities: after `- `, five of them would start an indented code block
    return "&#32;" * (len(s) - len(body)) + "".join(chars)


def code(text: object) -> str:
    """``text`` as an inline code span when it holds only name characters (a label, a step, a
    key), else as `md` text: nothing can close the span or reach a table pipe."""
    s = str(text)
    if CODE_SAFE.fullmatch(s) and "://" not in s:
        return f"`{s}`"
    return md(s)


def md_html(text: object) -> str:
    """``text`` inside a raw-HTML block of the Markdown (``<summary>``), on one line: HTML
    escaped, and Markdown punctuation as numeric entities, so that it reads as the same plain
    text whether a renderer parses Markdown there or not."""
    s = _defanged(text)
    out = []
    for i, ch in enumerate(s):
        if ch in HTML_PUNCT or (ch == "_" and not _intraword(s, i)):
            out.append(f"&#{ord(ch)};")
        else:
            out.append(ZWSP_ENTITY if ch == ZWSP else html.escape(ch, quote=True))
    return "".join(out)


def html_text(value: object) -> str:
    """``value`` as HTML text or a quoted attribute value."""
    return html.escape(str(value), quote=True)


SCRIPT_UNSAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028",
                 "\u2029": "\\u2029"}


def script_json(value: Any) -> str:
    """``value`` as JSON safe inside ``<script>``: ``<``, ``>``, ``&``, U+2028 and U+2029 only
    ever stand inside JSON strings, where their ``\\u`` escapes mean the same characters."""
    text = json.dumps(value, sort_keys=True)
    return "".join(SCRIPT_UNSAFE.get(ch, ch) for ch in text)
