"""What builds leave behind for later commands: the last run of each task, and a history.

- `<cache>/last-run.json`: per task id, the status (hit/run/fail/skip), key and label of the last
  build that planned it; `deploy-build graph` marks the DAG with it.
- `history.jsonl`: one compact line per build that did work (ran or failed a task): per target
  its status, task keys, parity, latency, speed-up and size. It lies beside `--manifests DIR`
  when one is given, else in the cache; `deploy-build report` draws the trend over it.
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

LAST_RUN = "last-run.json"
HISTORY = "history.jsonl"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
    from orchestrator.compare import size_of

    if manifest is None:
        return {"status": status}
    parity = (manifest.get("checks") or {}).get("parity") or {}
    results = (manifest.get("benchmark") or {}).get("results") or {}
    return {
        "status": manifest.get("status", status),
        "keys": {f"{i + 1}:{s['step']}": s.get("key") for i, s in enumerate(manifest["steps"])},
        "parity": {k: parity[k] for k in ("mean_cosine", "min_cosine", "top1_agreement")
                   if k in parity},
        "latency_ms": {k: v.get("median_ms") for k, v in sorted(results.items())},
        "speedup": {k: v.get("speedup") for k, v in sorted(results.items())},
        "noisy": bool((manifest.get("benchmark") or {}).get("noisy")),
        **({"not_measured": manifest["benchmark"]["not_measured"]}
           if (manifest.get("benchmark") or {}).get("not_measured") else {}),
        "size": size_of(manifest),
    }


def append_history(path: Path, table: list[Any], outcomes: dict[str, Any]) -> bool:
    """Append one line for this build when it did work (and judged targets: not for --only);
    True when it did."""
    if not table or not any(o.status in ("run", "fail") for o in outcomes.values()):
        return False
    targets = {label: target_record(manifest, status)
               for label, manifest, status, _ in sorted(table, key=lambda r: r[0])}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        # the run number counts the lines before: one build appends at a time (the lock is the
        # file's own, so no lock file lies beside a committed history)
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        previous = read_history(path)
        entry = {
            "run": (previous[-1].get("run", len(previous)) + 1) if previous else 1,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
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
