"""Hostile manifests and history lines: the PR comment and the report show them as plain text.

A manifest or a `history.jsonl` line is data a branch can shape; what `diff --format md` writes
from it is posted by CI, and `report` is opened in a browser. Each field here carries raw HTML, a
link, a bare URL, an early `</details>`, a new line and a heading, a table pipe and a backtick.
"""

from __future__ import annotations

import copy
import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from test_report import CHROMIUM, INSTALL, render_dom

from orchestrator.cli import main
from orchestrator.review.escape import code, md, md_html, one_line, script_json

ATTACKS = ("<img src=https://x/y.png>", "[click](https://evil.example)", "https://evil.example/a",
           "</details>", "\n## Injected", "|", "`")


def hostile(field: str) -> str:
    """``field`` followed by every attack: ``field<img src=...> [click](...) ... | ` ``."""
    return field + " ".join(ATTACKS) + " www.evil.example @someone #12 $x$ *em* ~~del~~ \\ ! end"


AUTOLINK = re.compile(r"(?i)(?:https?|ftp)://|www\.|[\w.+-]+@[\w-]|(?<![\w&])#\d")


@pytest.mark.parametrize("attack", ATTACKS)
def test_md_makes_each_attack_plain_text(attack: str) -> None:
    out = md(f"x {attack} y")
    assert "\n" not in out and "<img" not in out and "</details>" not in out
    assert "](" not in out and not AUTOLINK.search(out)
    assert not re.search(r"(?<![\\&])[|`\[\]#]", out)  # every pipe, backtick, bracket, # escaped
    assert md_html(attack).count("<") == 0 and "\n" not in md_html(attack)


def test_md_keeps_ordinary_names_and_change_lines() -> None:
    for text in ("b1_s128", "bert-edge/cpu-int8", "param changed: per_channel true -> false",
                 "artifact model.onnx: size 1000 -> 1100 (+10.0%), digest changed"):
        assert md(text) == text
    assert code("2:ort-quantize") == "`2:ort-quantize`" and code("a`b") == "a\\`b"
    assert md("_x_ *y*") == "\\_x\\_ \\*y\\*"  # only an intraword _ stays raw
    assert md("> q") == "&gt; q" and md("a>b") == "a>b"  # a blockquote marker only at the start
    assert md("1. x") == "1\\. x" and md("- x") == "\\- x" and md("    x") == "&#32;" * 4 + "x"
    assert md("a\r\nb\u2028c") == "a  b c"
    assert code("https://x") == "https&#8203;://x"  # never a code span holding a URL


def test_script_json_cannot_end_a_script_and_round_trips() -> None:
    value = {"n": "<!--<script>alert(1)</script>", "r": "</script><img src=x onerror=alert(1)>",
             "s": "a\u2028b\u2029c & d >"}
    text = script_json(value)
    assert not re.search(r"[<>&\u2028\u2029]", text)
    assert json.loads(text) == value


# the pull-request comment

def _manifest(prefix: str, n: int) -> dict:
    """A manifest where every name a reader sees is hostile; n picks old (1) or new (2)."""
    h = lambda field: hostile(f"{prefix}{field}")  # noqa: E731
    return {
        "schema": 1, "status": "ok" if n == 1 else h("reason"), "target": h("target"),
        "recipe": {"name": h("recipe"), "digest": "r"}, "model": {"digest": "m"},
        "failures": [h("failure")] if n == 2 else [],
        "steps": [{"step": h("step"), "key": f"k{n}" * 10 if n == 1 else h("key"), "version": "1",
                   "params": {h("param"): h(f"value{n}")}, "inputs": {h("input"): {"digest": f"d{n}"}},
                   "toolchain": {}, "metrics": {h("metric"): n}, "warnings": [h("warning")]}],
        "artifacts": [{"path": h("artifact"), "digest": f"a{n}", "size": 1000 * n}],
        "checks": {"parity": {"mean_cosine": 1.0 - 0.01 * n, "passed": n == 1,
                              "warnings": [h(f"warning{n}")]}},
        "benchmark": {"results": {h("point"): {"median_ms": 8.0 * n}}},
    }


def _odd_types(prefix: str, n: int) -> dict:
    """Strings where numbers belong: shown as escaped text, never a crash."""
    m = _manifest(prefix, n)
    m["checks"]["parity"]["mean_cosine"] = hostile(f"{prefix}cosine{n}")
    m["benchmark"]["results"] = {
        hostile(f"{prefix}point"): {"median_ms": hostile(f"{prefix}ms{n}"),
                                    "speedup": hostile(f"{prefix}x{n}"),
                                    "speedup_interval": [hostile("lo"), hostile("hi")]}}
    return m


def _write(folder: Path, manifests: list[dict]) -> Path:
    for i, m in enumerate(manifests):
        p = folder / "r" / f"{i}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(m))
    return folder


def _folders(tmp: Path) -> tuple[Path, Path]:
    changed, odd = _manifest("A", 1), _odd_types("B", 1)
    gone = _manifest("C", 1)
    added = _manifest("D", 2)
    old = _write(tmp / "old", [changed, odd, gone])
    new = _write(tmp / "new", [_manifest("A", 2), _odd_types("B", 2), added])
    return old, new


def _cells(row: str) -> list[str]:
    """A table row's cells as GFM splits them: on every pipe not preceded by a backslash."""
    return re.split(r"(?<!\\)\|", row.strip())[1:-1]


class _Text(HTMLParser):
    """The text of the rendered comment outside code, and every start tag."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.tags: list[str] = []
        self.code = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.code += tag == "code"

    def handle_endtag(self, tag: str) -> None:
        self.code -= tag == "code"

    def handle_data(self, data: str) -> None:
        if not self.code:
            self.text.append(data)


def _render(text: str) -> str:
    from markdown_it import MarkdownIt

    try:
        import linkify_it  # noqa: F401  # GFM's autolinks where the plugin is installed
        linkify = True
    except ImportError:
        linkify = False
    return MarkdownIt("gfm-like", {"linkify": linkify}).render(text)


def test_hostile_manifests_make_a_comment_that_shows_them_as_text(tmp_path: Path, capsys) -> None:
    old, new = _folders(tmp_path)
    assert main(["diff", str(old), str(new), "--format", "json", "--fail-on", "latency+1%"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert main(["diff", str(old), str(new), "--format", "md", "--fail-on", "latency+1%"]) == 2
    out = capsys.readouterr().out
    assert doc["regressions"] and all("point" in r for r in doc["regressions"])

    assert "<img" not in out.lower() and "](" not in out and not AUTOLINK.search(out)
    folds = sum(1 + any(d.startswith("benchmark.") for d in c["details"])
                for c in doc["targets"].values() if c["change"] != "same")
    assert folds == 6 and out.count("</details>") == out.count("<details>") == folds
    lines = out.splitlines()
    assert [x for x in lines if x.startswith("#")] == [lines[0]]
    assert lines[0] == "### deploy-build diff: 4 of 4 targets changed"
    assert not [x for x in lines if x.lstrip().startswith((">", "```", "~~~", "    "))]
    header = lines.index("| target | verdict | parity (mean cosine) | size | latency (median) | speed-up "
                         "| cause |")
    rows = lines[header + 2:lines.index("", header)]
    assert len(rows) == 4 and all(len(_cells(r)) == 7 for r in rows), rows

    page = _render(out)
    seen = _Text()
    seen.feed(page)
    assert "img" not in seen.tags and "a" not in seen.tags and "script" not in seen.tags
    assert [t for t in seen.tags if re.fullmatch(r"h\d", t)] == ["h3"]
    assert not {"em", "del", "s", "blockquote", "pre", "input"} & set(seen.tags)
    assert seen.tags.count("details") == folds and seen.tags.count("table") == 1
    rendered_rows = re.findall(r"<tr>(.*?)</tr>", page, re.S)
    assert len(rendered_rows) == 5 and all(r.count("<t") == 7 for r in rendered_rows)
    text = "".join(seen.text).replace("\u200b", "")
    assert not AUTOLINK.search("".join(seen.text))  # a zero-width space breaks each one
    for label in doc["targets"]:  # each label reads back as written, on one line
        assert one_line(label) in text
    for c in doc["targets"].values():
        for d in c["details"]:
            assert one_line(d) in text
    for r in doc["regressions"]:
        assert one_line(r) in text
    failures = [f for c in doc["targets"].values() for f in c["failures"]["new"]]
    assert len(failures) == 3  # the verdict cell says why, as text
    for f in failures:
        cell = next(_cells(r)[1] for r in rows if md(f.removeprefix("check ")) in r)
        assert md(f.removeprefix("check ")) in cell
        assert one_line(f) in text  # and the details list it whole
    causes = "".join(_cells(r)[6] for r in rows)
    assert md(hostile("Aparam")) in causes  # the changed param, escaped


# the report

NAME = "<!--<script>alert(1)</script>"
REASON = "</script><img src=x onerror=alert(1)>"


def write_hostile_history(path: Path) -> None:
    ok = {"status": "ok", "keys": {f"1:{REASON}": "a" * 64}, "parity": {"mean_cosine": 0.99},
          "latency_ms": {NAME: 9.0}, "speedup": {NAME: 2.0}, "noisy": False, "size": 1000}
    runs = []
    for night in (1, 2):
        rec = copy.deepcopy(ok)
        rec["latency_ms"][NAME] = 9.0 + night
        rec["keys"][f"1:{REASON}"] = str(night) * 64
        rec.update(failures=[REASON], noisy_points=[NAME], speedup_interval={NAME: [1.9, 2.1]},
                   gates={"min_speedup": 1.5, "mean_cosine": REASON}, benchmark_key=REASON)
        runs.append({"run": night, "time": f"{REASON} {night}", "branch": NAME, "revision": REASON,
                     "targets": {
                         f"bert-edge/{NAME}": rec,
                         f"{NAME}/cpu-int8": {**copy.deepcopy(ok), "parity": {"mean_cosine": REASON},
                                              "failures": REASON, "noisy_points": REASON,
                                              "speedup_interval": {NAME: [REASON, 2]}},
                         "bert-edge/gpu-fp16": {"status": REASON, "not_measured": REASON},
                         "bert-edge/odd": REASON,  # not a record: left out
                     }})
    path.write_text("".join(json.dumps(r) + "\n" for r in runs))


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.cells: list[str] = []
        self.scripts: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag in ("td", "script"):
            self._in = tag
            (self.cells if tag == "td" else self.scripts).append("")

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "td":
            self.cells[-1] += data
        elif self._in == "script":
            self.scripts[-1] += data


def test_hostile_history_makes_a_report_whose_scripts_hold(tmp_path: Path) -> None:
    history, out = tmp_path / "history.jsonl", tmp_path / "report.html"
    write_hostile_history(history)
    assert main(["report", "--history", str(history), "--out", str(out)]) == 0
    text = out.read_text()
    body = text[text.index("</head>"):]  # the head holds the inlined vega bundle
    assert NAME not in text and REASON not in text
    assert "<!--" not in body and "<img" not in body and body.count("<script") == 1
    page = _Page()
    page.feed(text)
    assert page.tags.count("script") == 2 and "img" not in page.tags
    embeds = page.scripts[-1]
    assert "<" not in embeds and ">" not in embeds  # nothing can end or comment out the script
    assert page.tags.count("tr") == 1 + 3  # the record that is not an object is left out
    assert NAME in page.cells and REASON in page.cells  # a target and a status, read back as text
    assert f"{REASON}/0" in page.cells  # a parity that is not a number is shown, not a crash
    assert any(f"rebuilt 1:{REASON}" in c for c in page.cells)
    assert f"{REASON} 2" in html.unescape(body)  # the last run's time
    assert REASON[:12] in html.unescape(body) and NAME in html.unescape(body)  # revision, branch
    assert any(REASON in c for c in page.cells if c != REASON)  # why it failed, as text
    specs = [json.loads(m) for m in re.findall(r"vegaEmbed\('#chart\d+', (.*?), \{renderer", text)]
    values = [v for s in specs for data in s["datasets"].values() for v in data]
    assert {"target": NAME, "point": NAME} in [{k: v[k] for k in ("target", "point")}
                                             for v in values if "point" in v]
    assert any(v.get("target") == f"bert-edge/{NAME}" for v in values)


@pytest.mark.skipif(CHROMIUM is None, reason=f"no chromium: {INSTALL}")
def test_hostile_history_report_draws_every_chart_in_chromium(tmp_path: Path) -> None:
    history, out = tmp_path / "history.jsonl", tmp_path / "report.html"
    write_hostile_history(history)
    assert main(["report", "--history", str(history), "--out", str(out)]) == 0
    dom = render_dom(out, tmp_path)
    dom = dom[dom.index("<body>"):]
    assert "<img" not in dom
    charts = re.findall(r"<div class=\"chart[^\"]*\" id=\"chart(\d)\"[^>]*>(.*?)</div>\s*(?=<h2|<script)",
                        dom, re.S)
    assert [i for i, _ in charts] == ["0", "1", "2", "3", "4"]
    for _, svg in charts:
        assert "<svg" in svg and "role-mark" in svg, svg[:500]
