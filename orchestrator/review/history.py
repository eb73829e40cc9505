"""What builds leave behind for later commands: the last run of each task, and a history.

- `<cache>/last-run.json`: per task id, the status (hit/run/fail/skip), key and label of the last
  build that planned it; `deploy-build graph` marks the DAG with it.
- `history.jsonl`: one compact line per build that did work (ran or failed a task): the run's
  number, UTC time, and the branch and revision it was built from (`$GITHUB_REF_NAME` and
  `$GITHUB_SHA` in GitHub Actions, else `git rev-parse` in the project; left out outside a
  repository); per target its status, why it failed, task keys, parity, latency, speed-up with
  its interval, which points were measured noisy, the gates it was judged on and its size. It
  lies beside `--manifests DIR` when one is given, else in the cache; `deploy-build report` draws
  the trend over it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from orchestrator.hashing import atomic_write

LAST_RUN = "last-run.json"
HISTORY = "history.jsonl"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock (a file in the cache) beside path while it is read, merged and
    written again: two builds finishing at once must not lose each other's records (the lock is
    released with the file descriptor, also when the process dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_last_run(cache: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads((cache / LAST_RUN).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_last_run(cache: Path, graph: Any, outcomes: dict[str, Any]) -> None:
    with _locked(cache / LAST_RUN):
        record = read_last_run(cache)
        for task in graph.tasks():
            o = outcomes.get(task.id)
            if o is not None:
                record[task.id] = {"status": o.status, "key": o.key, "label": task.label}
        _write_atomic(cache / LAST_RUN, json.dumps(record, indent=2, sort_keys=True) + "\n")


def history_path(cache: Path, manifests: Path | None) -> Path:
    return (manifests.parent if manifests is not None else cache) / HISTORY


def target_record(manifest: dict[str, Any] | None, status: str) -> dict[str, Any]:
    """The compact figures of one target (None manifest: it did not finish)."""
    from orchestrator.review.compare import size_of

    if manifest is None:
        return {"status": status}
    parity = (manifest.get("checks") or {}).get("parity") or {}
    bench = manifest.get("benchmark") or {}
    results = {k: v for k, v in sorted((bench.get("results") or {}).items()) if isinstance(v, dict)}
    record: dict[str, Any] = {
        "status": manifest.get("status", status),
        "keys": {f"{i + 1}:{s['step']}": s.get("key") for i, s in enumerate(manifest["steps"])},
        "parity": {k: parity[k] for k in ("mean_cosine", "min_cosine", "top1_agreement")
                   if k in parity},
        "latency_ms": {k: v.get("median_ms") for k, v in results.items()},
        "speedup": {k: v.get("speedup") for k, v in results.items()},
        "noisy": bool(bench.get("noisy")),
        "size": size_of(manifest),
    }
    optional = {
        "not_measured": bench.get("not_measured"),
        "failures": manifest.get("failures"),
        "speedup_interval": {k: v["speedup_interval"] for k, v in results.items()
                             if v.get("speedup_interval")},
        "noisy_points": sorted(k for k, v in results.items() if v.get("noisy")),
        "benchmark_key": bench.get("key"),
        "gates": gates(manifest),
        "search": search_record(manifest.get("search")),
    }
    record.update({k: v for k, v in optional.items() if v})
    return record


def search_record(section: Any) -> dict[str, Any] | None:
    """A search target's choice and each variant's figures, for the report's front chart."""
    if not isinstance(section, dict):
        return None
    keep = ("name", "status", "speedup", "interval", "mean_cosine", "size")
    rows = [{k: r[k] for k in keep if k in r} for r in section.get("variants") or []
            if isinstance(r, dict)]
    return {"winner": section.get("winner"), "front": section.get("front") or [],
            "objective": section.get("objective"), "variants": rows}


def gates(manifest: dict[str, Any]) -> dict[str, float]:
    """The thresholds the target was judged on, for the report's lines: ``min_speedup`` (the
    highest judged here; a threshold for other machines is left out) and the parity
    ``mean_cosine`` (the effective one, a precision's default included)."""
    out: dict[str, float] = {}
    rows = ((manifest.get("benchmark") or {}).get("gates")) or []
    judged = [r.get("threshold") for r in rows if isinstance(r, dict)
              and r.get("gate") == "min_speedup" and r.get("verdict") != "not judged here"]
    speed = [float(t) for t in judged if isinstance(t, int | float) and not isinstance(t, bool)]
    if speed:
        out["min_speedup"] = max(speed)
    parity = (manifest.get("checks") or {}).get("parity") or {}
    for where in (parity.get("thresholds"), parity.get("gate")):
        value = (where or {}).get("mean_cosine") if isinstance(where, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            out["mean_cosine"] = float(value)
            break
    return out


def _git(folder: Path, *args: str) -> str | None:
    import subprocess  # only when a history line is written: a no-op imports none

    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    out = done.stdout.strip()
    return out if done.returncode == 0 and out else None


def provenance(folder: Path) -> dict[str, str]:
    """Which branch and revision this build was made from: in GitHub Actions
    `$GITHUB_REF_NAME` (a pull request's reads `<number>/merge`, never the branch a fork named
    `main`) and `$GITHUB_SHA`; else the git repository the history lies in (a detached HEAD has
    a revision and no branch); else nothing."""
    env = {"branch": os.environ.get("GITHUB_REF_NAME"), "revision": os.environ.get("GITHUB_SHA")}
    if env["revision"]:
        return {k: v for k, v in env.items() if v}
    out: dict[str, str] = {}
    revision = _git(folder, "rev-parse", "HEAD")
    if revision:
        out["revision"] = revision
        branch = _git(folder, "symbolic-ref", "--quiet", "--short", "HEAD")
        if branch:
            out["branch"] = branch
    return out


def append_history(path: Path, table: list[Any], outcomes: dict[str, Any]) -> bool:
    """Append one line for this build when it did work (and judged targets: not for --only);
    True when it did."""
    if not table or not any(o.status in ("run", "fail") for o in outcomes.values()):
        return False
    targets = {label: target_record(manifest, status)
               for label, manifest, status in sorted((r.label, r.manifest, r.status) for r in table)}
    path.parent.mkdir(parents=True, exist_ok=True)
    where = provenance(path.parent)  # before the lock: it may run git
    with path.open("a") as f:
        # the run number counts the lines before: one build appends at a time (the lock is the
        # file's own, so no lock file lies beside a committed history)
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        previous = read_history(path)
        entry = {
            "run": (previous[-1].get("run", len(previous)) + 1) if previous else 1,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **where,
            "targets": targets,
        }
        f.write(json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n")
    return True


def read_history(path: Path) -> list[dict[str, Any]]:
    """The recorded runs, oldest first; a torn or foreign line is left out."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("targets"), dict):
            out.append(entry)
    return out
