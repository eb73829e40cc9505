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
    from orchestrator.manifestset import from_path

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
    if old.get("status") != new.get("status"):
        lines.append(f"status: {old.get('status')} -> {new.get('status')}")
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
    for section in ("checks", "benchmark"):
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


def broken_rules(old: dict[str, Any], new: dict[str, Any], rules: list[str]) -> list[str]:
    broken: list[str] = []
    flat_new = _metrics(new)
    flat_old = flatten({"benchmark": old.get("benchmark", {})})
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
                for k, v in flatten({"benchmark": new.get("benchmark", {})}).items():
                    if k.endswith("median_ms") and "reference" not in k:
                        a = flat_old.get(k)
                        if isinstance(a, int | float) and a and (v - a) / a * 100 > pct:
                            broken.append(f"{rule}: {k} {_change(a, v)}")
        else:
            raise FatalError(f"cannot read --fail-on rule {rule!r}; write e.g. "
                             "'parity.mean_cosine<0.99', 'latency+10%' or 'size+5%'")
    return broken


def run(args: argparse.Namespace) -> int:
    from orchestrator.manifestset import label_of, load_pair

    old, new = load_pair(args.old, args.new)
    check_rules(args.fail_on, [*old.values(), *new.values()])
    fmt = getattr(args, "format", "text") or "text"
    failed: list[str] = []
    comparisons: dict[str, Any] = {}
    for name in sorted(set(old) | set(new)):
        label = name or label_of(new.get(name, old.get(name, {})), "")
        a, b = old.get(name), new.get(name)
        lines = diff_manifest(a, b) if a is not None and b is not None else []
        if a is not None and b is not None:
            failed.extend(f"{label}: {x}" for x in broken_rules(a, b, args.fail_on))
        if fmt == "text":
            _print_text(label, a, b, lines)
        else:
            from orchestrator.compare import compare

            comparisons[label] = compare(a, b, lines)
    if fmt == "json":
        print(json.dumps({"targets": comparisons, "regressions": failed}, indent=2, sort_keys=True))
    elif fmt == "md":
        from orchestrator.markdown import render

        print(render(comparisons, failed), end="")
    else:
        for f in failed:
            print(f"REGRESSION {f}")
    return EXIT_BUILD_FAILED if failed else EXIT_OK


def _print_text(label: str, a: dict[str, Any] | None, b: dict[str, Any] | None,
                lines: list[str]) -> None:
    if a is None:
        print(f"{label}: new target")
        return
    if b is None:
        print(f"{label}: removed")
        return
    from orchestrator.compare import latency

    print(f"{label}: {'no changes' if not lines else ''}".rstrip())
    verdicts = latency(a, b)
    for line in lines:
        point = line.removeprefix("benchmark.results.").partition(".median_ms:")[0]
        v = verdicts.get(point) if line.startswith(f"benchmark.results.{point}.median_ms:") else None
        note = f"  (noise: inside the measured ±{v['band_pct']:g}%)" if v and v["verdict"] == "noise" else ""
        print(f"  {line}{note}")
