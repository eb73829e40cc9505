"""Task keys: sha256 of the canonical JSON of exactly what determines a task's result.

Never paths, timestamps, host names or thread counts. Bump KEY_SCHEMA when the document's shape
changes (every key changes with it).
"""

from __future__ import annotations

from typing import Any

from orchestrator.hashing import sha256_json
from orchestrator.host.versions import dist_version

# 3: the layout change (modules moved into layer packages) and the narrowed code digests
KEY_SCHEMA = 3


def toolchain(packages: tuple[str, ...]) -> dict[str, str]:
    return {p: dist_version(p) for p in packages}


def key_document(
    *,
    step: str,
    version: str,
    plugin: dict[str, str],
    code: dict[str, str],
    params: dict[str, Any],
    inputs: dict[str, str],
    toolchain: dict[str, str],
    hardware: dict[str, Any],
    model: dict[str, Any],
) -> dict[str, Any]:
    return {
        "schema": KEY_SCHEMA,
        "step": step,
        "version": version,
        "plugin": plugin,
        "code": code,
        "params": params,
        "inputs": inputs,
        "toolchain": toolchain,
        "hardware": hardware,
        "model": model,
    }


def task_key(doc: dict[str, Any]) -> str:
    return sha256_json(doc)


def diff_documents(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Why new differs from old, in words a user can act on."""
    reasons: list[str] = []
    if old.get("schema") != new.get("schema"):
        return ["key schema changed"]
    if old.get("version") != new.get("version"):
        reasons.append(f"step version changed ({old.get('version')} -> {new.get('version')})")
    if old.get("plugin") != new.get("plugin"):
        o, n = old.get("plugin", {}), new.get("plugin", {})
        reasons.append(f"plugin changed ({o.get('dist')} {_short(o.get('version'))} -> "
                       f"{n.get('dist')} {_short(n.get('version'))})")
    oc, nc = old.get("code", {}), new.get("code", {})
    changed = sorted(k for k in set(oc) | set(nc) if oc.get(k) != nc.get(k))
    if changed:
        reasons.append(f"code changed: {', '.join(changed)}")
    for field, label in (("params", "param"), ("hardware", "hardware"), ("model", "model option")):
        o, n = old.get(field, {}), new.get(field, {})
        for k in sorted(set(o) | set(n)):
            if o.get(k, "<unset>") != n.get(k, "<unset>"):
                reasons.append(f"{label} changed: {k} {_fmt(o.get(k, '<unset>'))} -> "
                               f"{_fmt(n.get(k, '<unset>'))}")
    oi, ni = old.get("inputs", {}), new.get("inputs", {})
    for k in sorted(set(oi) | set(ni)):
        if oi.get(k) != ni.get(k):
            reasons.append(f"input changed: {k}")
    om, nm = old.get("machine", {}), new.get("machine", {})
    for k in sorted(set(om) | set(nm)):
        if om.get(k) != nm.get(k):
            reasons.append(f"machine changed: {k} {om.get(k, '-')} -> {nm.get(k, '-')}")
    ot, nt = old.get("toolchain", {}), new.get("toolchain", {})
    for k in sorted(set(ot) | set(nt)):
        if ot.get(k) != nt.get(k):
            reasons.append(f"toolchain changed: {k} {ot.get(k, '-')} -> {nt.get(k, '-')}")
    return reasons or ["key changed"]


def _fmt(v: Any) -> str:
    import json

    return v if isinstance(v, str) and v == "<unset>" else json.dumps(v, sort_keys=True)


def _short(v: Any) -> str:
    s = str(v)
    return s[:12] if len(s) == 64 else s
