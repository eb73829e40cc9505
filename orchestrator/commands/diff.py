"""`deploy-build diff OLD NEW`: what changed between two manifests (or folders of them).

For people: a short, stable list of changes per target (status, steps, artifacts, checks, speed).
For CI: `--fail-on` rules turn regressions into a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from orchestrator.errors import EXIT_BUILD_FAILED, EXIT_OK, FatalError

RULE = re.compile(r"^(?P<path>[\w.\-]+)\s*(?P<op><=|>=|<|>)\s*(?P<value>-?\d+(\.\d+)?)$")
GROWTH = re.compile(r"^(?P<what>latency|size)\s*\+\s*(?P<pct>\d+(\.\d+)?)%$")


def load_manifests(path: Path) -> dict[str, dict[str, Any]]:
    from orchestrator.review.manifestset import from_path

    return from_path(path)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Scalar leaves by dotted path (lists of scalars stay whole)."""
    out: dict[str, Any] = {}
    if isinstance(value, dict):
        for k in sorted(value):
            out.update(flatten(value[k], f"{prefix}.{k}" if prefix else str(k)))
    else:
        out[prefix] = value
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return json.dumps(v, sort_keys=True) if not isinstance(v, str) else v


def _change(a: Any, b: Any) -> str:
    text = f"{_fmt(a)} -> {_fmt(b)}"
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool) and a:
        text += f" ({(b - a) / abs(a) * 100:+.1f}%)"
    return text


def diff_manifest(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    not_measured = (new.get("benchmark") or {}).get("not_measured")
    if old.get("status") != new.get("status"):
        lines.append(f"status: {old.get('status')} -> {new.get('status')}")
    sa, sb = old.get("search") or {}, new.get("search") or {}
    if (sa or sb) and sa.get("winner") != sb.get("winner"):
        lines.append(f"search: winner {sa.get('winner')} -> {sb.get('winner')}: {sb.get('why', '')}")
    if old.get("model", {}).get("digest") != new.get("model", {}).get("digest"):
        lines.append("model source changed (digest)")
    osteps = {f"{i + 1}:{s['step']}": s for i, s in enumerate(old.get("steps", []))}
    nsteps = {f"{i + 1}:{s['step']}": s for i, s in enumerate(new.get("steps", []))}
    for name in list(nsteps) + [n for n in osteps if n not in nsteps]:
        a, b = osteps.get(name), nsteps.get(name)
        if a is None:
            lines.append(f"step {name}: added")
            continue
        if b is None:
            lines.append(f"step {name}: removed")
            continue
        for field in ("version", "params", "toolchain", "metrics"):
            fa, fb = flatten(a.get(field, {})), flatten(b.get(field, {}))
            for k in sorted(set(fa) | set(fb)):
                if fa.get(k) != fb.get(k):
                    lines.append(f"step {name}: {field}.{k} {_change(fa.get(k), fb.get(k))}"
                                 if k else f"step {name}: {field} {_change(fa.get(k), fb.get(k))}")
    oart = {x["path"]: x for x in old.get("artifacts", [])}
    nart = {x["path"]: x for x in new.get("artifacts", [])}
    for p in sorted(set(oart) | set(nart)):
        a, b = oart.get(p), nart.get(p)
        if a is None or b is None:
            lines.append(f"artifact {p}: {'added' if a is None else 'removed'}")
        elif a["digest"] != b["digest"]:
            lines.append(f"artifact {p}: size {_change(a['size'], b['size'])}, digest changed")
    if not_measured:  # cheap gates first: the benchmark did not run, it was not removed
        lines.append(f"benchmark: {not_measured}")
    for section in ("checks",) if not_measured else ("checks", "benchmark"):
        fa, fb = flatten(old.get(section, {})), flatten(new.get(section, {}))
        for k in sorted(set(fa) | set(fb)):
            if k.endswith(".key") or k == "key":
                continue
            if fa.get(k) != fb.get(k):
                lines.append(f"{section}.{k}: {_change(fa.get(k), fb.get(k))}")
    return lines


def _metrics(m: dict[str, Any]) -> dict[str, Any]:
    """The values a --fail-on rule can name: checks.<check>.<metric> (also <check>.<metric>)
    and benchmark.<...>."""
    flat = flatten({"checks": m.get("checks", {}), "benchmark": m.get("benchmark", {})})
    flat.update(flatten(m.get("checks", {})))
    return flat


def check_rules(rules: list[str], manifests: list[dict[str, Any]]) -> None:
    """Every rule must parse and name a numeric metric that some manifest holds: a typo is a
    user error before anything is printed, never a silently broken (or passing) gate."""
    known: set[str] = set()
    for m in manifests:
        known.update(k for k, v in _metrics(m).items()
                     if isinstance(v, int | float) and not isinstance(v, bool))
    for rule in rules:
        match = RULE.match(rule.strip())
        if match is None and GROWTH.match(rule.strip()) is None:
            raise FatalError(f"cannot read --fail-on rule {rule!r}; write e.g. "
                             "'parity.mean_cosine<0.99', 'latency+10%' or 'size+5%'")
        if match is not None and match["path"] not in known:
            from orchestrator.recipe import _did_you_mean

            hint = _did_you_mean(match["path"], known) or (
                "metrics: " + ", ".join(sorted(k for k in known if not k.startswith("checks."))[:12])
                if known else "the manifests hold no numeric metrics")
            raise FatalError(f"--fail-on rule {rule!r} names {match['path']!r}, which no manifest "
                             f"holds as a number; {hint}")


def broken_rules(old: dict[str, Any], new: dict[str, Any], rules: list[str],
                 paired: dict[str, Any] | None = None) -> list[str]:
    broken: list[str] = []
    flat_new = _metrics(new)
    for rule in rules:
        m, g = RULE.match(rule.strip()), GROWTH.match(rule.strip())
        if m:
            value = flat_new.get(m["path"])
            if not isinstance(value, int | float):
                broken.append(f"{rule}: {m['path']} is missing from the new manifest")
                continue
            limit = float(m["value"])
            ok = {"<": value >= limit, "<=": value > limit, ">": value <= limit,
                  ">=": value < limit}[m["op"]]
            if not ok:
                broken.append(f"{rule}: {m['path']} is {value:.6g}")
        elif g:
            pct = float(g["pct"])
            if g["what"] == "size":
                a = sum(x["size"] for x in old.get("artifacts", []))
                b = sum(x["size"] for x in new.get("artifacts", []))
                if a and (b - a) / a * 100 > pct:
                    broken.append(f"{rule}: artifacts grew {(b - a) / a * 100:.1f}%")
            else:
                broken.extend(_slower(rule, pct, old, new, paired))
        else:
            raise FatalError(f"cannot read --fail-on rule {rule!r}; write e.g. "
                             "'parity.mean_cosine<0.99', 'latency+10%' or 'size+5%'")
    return broken


def _slower(rule: str, pct: float, old: dict[str, Any], new: dict[str, Any],
            paired: dict[str, Any] | None) -> list[str]:
    """Grid points clearly slower (the judged change's interval wholly above none) by more than
    pct, on the best paired basis there is (compare.latency)."""
    from orchestrator.review.compare import latency

    out = []
    for point, v in latency(old, new, paired).items():
        change = v.get("change_pct")
        if v.get("verdict") == "slower" and isinstance(change, int | float) and change > pct:
            out.append(f"{rule}: {point} {latency_words(v)}")
    return out


def latency_words(v: dict[str, Any], raw_too: bool = True) -> str:
    """``+26.3% [+15.0%..+38.9%] through the speed-up vs PyTorch (raw medians 65 -> 80 ms)``."""
    from orchestrator.review.compare import BASIS_RAW, BASIS_SAME

    if v.get("verdict") == "not measured":
        return f"not measured ({v.get('why')})"
    raw = f"{_fmt(v['old'])} -> {_fmt(v['new'])} ms" if v.get("old") is not None else ""
    basis = v.get("basis")
    if basis is None:
        return raw
    if basis == BASIS_SAME:
        return f"{raw}: {basis}, not judged"
    text = f"{v['change_pct']:+.1f}%"
    if v.get("interval_pct"):
        lo, hi = v["interval_pct"]
        text += f" [{lo:+.1f}%..{hi:+.1f}%]"
    if basis == BASIS_RAW:
        band = v.get("band_pct")
        return f"{raw} ({text}, raw medians{f', band ±{band:g}%' if band is not None else ''})"
    return f"{text} {basis}" + (f" (raw medians {raw})" if raw and raw_too else "") + (
        ", noisy" if v.get("noisy") else "")


def run(args: argparse.Namespace) -> int:
    from orchestrator.review.manifestset import label_of, load_pair

    old, new = load_pair(args.old, args.new)
    check_rules(args.fail_on, [*old.values(), *new.values()])
    paired: dict[str, Any] = {}
    if getattr(args, "rebench", False):
        from orchestrator.review.abtest import rebench

        paired = rebench(args, old, new)
    fmt = getattr(args, "format", "text") or "text"
    failed: list[str] = []
    comparisons: dict[str, Any] = {}
    for name in sorted(set(old) | set(new)):
        label = name or label_of(new.get(name, old.get(name, {})), "")
        a, b = old.get(name), new.get(name)
        lines = diff_manifest(a, b) if a is not None and b is not None else []
        if a is not None and b is not None:
            failed.extend(f"{label}: {x}" for x in broken_rules(a, b, args.fail_on,
                                                                  paired.get(label)))
        if fmt == "text":
            _print_text(label, a, b, lines, paired.get(label))
        else:
            from orchestrator.review.compare import compare

            comparisons[label] = compare(a, b, lines, paired.get(label))
    if fmt == "json":
        print(json.dumps({"targets": comparisons, "regressions": failed}, indent=2, sort_keys=True))
    elif fmt == "md":
        from orchestrator.review.markdown import render

        print(render(comparisons, failed), end="")
    else:
        for f in failed:
            print(f"REGRESSION {f}")
    return EXIT_BUILD_FAILED if failed else EXIT_OK


def _print_text(label: str, a: dict[str, Any] | None, b: dict[str, Any] | None,
                lines: list[str], paired: dict[str, Any] | None = None) -> None:
    if a is None:
        print(f"{label}: new target")
        return
    if b is None:
        print(f"{label}: removed")
        return
    from orchestrator.review.compare import latency

    print(f"{label}: {'no changes' if not lines else ''}".rstrip())
    verdicts = latency(a, b, paired)
    for line in lines:
        point = line.removeprefix("benchmark.results.").partition(".median_ms:")[0]
        v = verdicts.get(point) if line.startswith(f"benchmark.results.{point}.median_ms:") else None
        print(f"  {line}{_judged_note(v)}")
    for point, v in verdicts.items():
        if v.get("basis") == "paired A/B":
            print(f"  latency {point}: head/base {latency_words(v)}: {v['verdict']}")


def _judged_note(v: dict[str, Any] | None) -> str:
    if not v or "basis" not in v:
        return ""
    if v["basis"] == "raw medians":
        return f"  (noise: inside the measured ±{v['band_pct']:g}%)" if v["verdict"] == "noise" else ""
    if v["basis"] == "same engine re-measured":
        return "  (the same engine re-measured: not judged)"
    if v["basis"] == "paired A/B":
        return ""
    return f"  (judged {latency_words(v, raw_too=False)}: {v['verdict']})"
