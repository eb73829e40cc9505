"""Paired A/B of two engines for a pull request: `deploy-build diff BASE HEAD --rebench`.

Two runs' absolute latencies are not comparable on a shared machine; a latency change between
two engines is measured by timing both alternately, in one window, on this machine: the head
engine takes the place of the benchmark's PyTorch reference and the base engine the place of its
engine (`steps.benchmark.measure_point`: ABBA windows, a 95% bootstrap interval over the rounds,
the outside-load detector, one more attempt when noisy), so its paired ratio is head/base
latency with its interval (``ratio`` > 1: the head is slower).

The engines come from where the manifests were read, when that is a target folder holding the
engine with the recorded digest (a bundle, `build/<recipe>/<target>/`), else from the cache
(local, or `--remote-cache`) by the digest the manifest records. The run holds the machine lock
alone, as a benchmark does. Heavy runtimes are imported only here, only with --rebench.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from orchestrator.errors import FatalError
from orchestrator.review.manifestset import label_of

POINT = re.compile(r"^b(\d+)_s(\d+)$")


def changed_engines(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether the engine's bytes differ (any of its artifacts: an OpenVINO IR is two files)
    and both sides were benchmarked."""
    def model(m: dict[str, Any]) -> str | None:
        arts = sorted((str(a.get("name")), str(a.get("digest"))) for a in m.get("artifacts") or [])
        return repr(arts) if any(n == "model" for n, _ in arts) else None

    def measured(m: dict[str, Any]) -> bool:
        return bool((m.get("benchmark") or {}).get("results"))

    return model(old) is not None and model(new) is not None and model(old) != model(new) \
        and measured(old) and measured(new)


def engine_folders(spec: str) -> dict[str, Path]:
    """label -> the target folder a manifest was read from, for a side given as a path."""
    from orchestrator.review.manifestset import parse

    root = Path(spec)
    if not root.is_dir():
        return {}
    found: dict[str, Path] = {}
    for path in [root / "manifest.json", *sorted(root.glob("*/*/manifest.json"))]:
        if path.is_file():
            try:
                data = parse(path.read_text(), str(path), strict=False)
            except (OSError, UnicodeDecodeError, FatalError):
                continue
            if data is not None:
                found.setdefault(label_of(data, ""), path.parent)
    return found


def _model_path(m: dict[str, Any]) -> str:
    return str([a for a in m["artifacts"] if a.get("name", "model") == "model"][0]["path"])


def _in_folder(m: dict[str, Any], folder: Path | None) -> bool:
    """Whether folder holds every artifact of m as the bytes m records."""
    from orchestrator.hashing import sha256_file

    if folder is None:
        return False
    for a in m["artifacts"]:
        here = folder / str(a["path"])
        if a.get("kind", "file") != "file" or not here.is_file() \
                or here.stat().st_size != a["size"] or sha256_file(here) != a["digest"]:
            return False
    return True


def locate(m: dict[str, Any], folder: Path | None, store: Any, scratch: Path, side: str,
           label: str) -> Path:
    """The engine a manifest describes (all its artifacts: an OpenVINO IR's .xml and .bin): in
    its target folder if the bytes there are the ones it records, else placed from the cache by
    digest; the path of its model file."""
    from orchestrator.store.base import Blob, BlobError

    if _in_folder(m, folder):
        assert folder is not None
        return folder / _model_path(m)
    for art in m["artifacts"]:
        try:
            store.materialize(Blob(art.get("kind", "file"), art["digest"], art["size"]),
                              scratch / side / str(art["path"]))
        except BlobError as e:
            raise FatalError(f"diff --rebench: the {side} engine of {label} ({art['path']}, "
                             f"sha256 {art['digest'][:12]}) is in no cache here ({e}); build that "
                             "revision on this machine first (or give --cache / --remote-cache "
                             "where it is, or the build/ folders that hold it)") from None
    return scratch / side / _model_path(m)


def grid(new: dict[str, Any]) -> list[tuple[int, int]]:
    points = []
    for key in sorted((new.get("benchmark") or {}).get("results") or {}):
        match = POINT.match(key)
        if match:
            points.append((int(match[1]), int(match[2])))
    return points


def _vocab(folder: Path | None) -> int:
    """A vocabulary bound for the synthetic token ids: the bundled vocab.txt's size, else 30
    (ids every BERT-like vocabulary has)."""
    for rel in ("vocab.txt", "tokenizer/vocab.txt"):
        try:
            lines = (folder / rel).read_text().count("\n") if folder else 0
        except OSError:
            continue
        if lines:
            return lines
    return 30


def measure_pair(base: Path, head: Path, m: dict[str, Any], vocab: int,
                 log: Any) -> dict[str, Any]:
    """head vs base at each grid point of the head's benchmark: {point: {ratio, interval,
    noisy, noise, base_ms, head_ms, runs}}."""
    from orchestrator.runtime.engines import open_engine
    from orchestrator.steps.benchmark import BenchmarkParams, measure_point, point_key, synthetic

    bench = m.get("benchmark") or {}
    threads = int(bench.get("threads") or 2)
    hint = str(bench.get("precision_hint") or "f32")
    task = str((m.get("model") or {}).get("task") or "feature-extraction")
    p = BenchmarkParams.model_validate({"threads": threads, "precision_hint": hint})
    base_e = open_engine(base, threads, hint, task=task)
    head_e = open_engine(head, threads, hint, task=task)
    out: dict[str, Any] = {}
    for b, s in grid(m):
        log(f"  {point_key(b, s)}: head and base alternated in one window")
        # the base in the engine's place, the head in the reference's: the paired "speed-up"
        # (reference ms / engine ms per round) is then head/base latency itself
        r = measure_point(base_e.run, head_e.run, synthetic(b, s, vocab), p, log=log)
        ratio = r["speedup"]
        lo, hi = r["speedup_interval"] or [ratio, ratio]
        out[point_key(b, s)] = {
            "ratio": ratio, "interval": [lo, hi], "noisy": r["noisy"], "noise": r["noise"],
            "head_ms": r["reference"]["median_ms"], "base_ms": r["median_ms"],
            "runs": r["runs"], "rounds": r["rounds"]}
    return out


def rebench(args: argparse.Namespace, old: dict[str, dict[str, Any]],
            new: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """label -> paired figures for every target whose engine changed, measured here under the
    machine lock."""
    from orchestrator.session import lock_timeout, open_store, project_root
    from orchestrator.store.config import attach_remote
    from orchestrator.store.locks import BuildLocks, LockTimeout, hold_machine

    pairs = [n for n in sorted(set(old) & set(new)) if changed_engines(old[n], new[n])]
    if not pairs:
        return {}
    cache = Path(args.cache or os.environ.get("DEPLOY_BUILD_CACHE") or project_root(Path.cwd()) / "cache")
    store = attach_remote(open_store(cache), args)
    folders = {"base": engine_folders(args.old), "head": engine_folders(args.new)}

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    paired: dict[str, dict[str, Any]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="deploy-build-ab-") as tmp, \
                BuildLocks(cache) as locks:
            try:
                hold_machine(locks, "ab", True, "diff --rebench", lock_timeout(args), say)
            except LockTimeout as e:
                raise FatalError(str(e)) from None
            for name in pairs:
                label = name or label_of(new[name], "")
                base = locate(old[name], folders["base"].get(label), store, Path(tmp), "base", label)
                head = locate(new[name], folders["head"].get(label), store, Path(tmp), "head", label)
                say(f"rebench {label}: head vs base engine")
                paired[label] = measure_pair(base, head, new[name],
                                             _vocab(folders["head"].get(label)), say)
    finally:
        store.close()
    return paired
