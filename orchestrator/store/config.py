"""Which remote cache a command uses: --remote-cache, $DEPLOY_BUILD_REMOTE_CACHE, or the recipe's
``cache: {remote: URL}``, in that order; the mode likewise (default readwrite). fsspec is imported
only when one of them names a remote."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import Any, cast

from orchestrator.errors import FatalError
from orchestrator.store.local import LocalStore

REMOTE_ENV = "DEPLOY_BUILD_REMOTE_CACHE"
MODE_ENV = "DEPLOY_BUILD_REMOTE_CACHE_MODE"


def remote_settings(args: argparse.Namespace, recipes: Sequence[Any] = ()
                    ) -> tuple[str | None, str, str]:
    """(URL or None, mode, where the URL was set)."""
    url = getattr(args, "remote_cache", None)
    where = "--remote-cache"
    if not url and os.environ.get(REMOTE_ENV):
        url, where = os.environ[REMOTE_ENV], f"${REMOTE_ENV}"
    mode = getattr(args, "remote_cache_mode", None) or os.environ.get(MODE_ENV) or None
    for r in recipes:
        settings = r.model.cache
        if settings.remote and not url:
            url, where = settings.remote, f"cache.remote at {r.where('cache', 'remote')}"
            mode = mode or settings.mode
    mode = mode or "readwrite"
    if mode not in ("read", "write", "readwrite"):
        raise FatalError(f"remote cache mode {mode!r} (from --remote-cache-mode or ${MODE_ENV}) is "
                         "not one of read, write, readwrite")
    if url in ("none", "off"):
        url = None
    return url, mode, where


def open_remote(url: str, mode: str, where: str = "--remote-cache") -> Any:
    """The Remote for url, probed (an unreachable one is switched off with one warning)."""
    from orchestrator.store.entries import SIGNING_KEY_ENV
    from orchestrator.store.remote import OPTIONS_ENV, Mode, Remote

    raw_options = os.environ.get(OPTIONS_ENV) or "{}"
    try:
        options = json.loads(raw_options)
        if not isinstance(options, dict):
            raise ValueError("not an object")
    except ValueError as e:
        raise FatalError(f"${OPTIONS_ENV} is not a JSON object of fsspec options ({e}); e.g. "
                         '{"endpoint_url": "http://127.0.0.1:9000"}') from None
    key = os.environ.get(SIGNING_KEY_ENV)
    try:
        remote = Remote(url, cast(Mode, mode), key.encode() if key else None, options)
    except (ImportError, ValueError) as e:
        hint = " (pip install s3fs for s3://)" if isinstance(e, ImportError) else ""
        raise FatalError(f"cannot use the remote cache {url!r} ({where}): {e}{hint}; give an "
                         "fsspec URL such as s3://bucket/prefix or file:///shared/folder") from None
    remote.probe()
    return remote


def attach_remote(store: LocalStore, args: argparse.Namespace, recipes: Sequence[Any] = ()
                  ) -> LocalStore:
    """The store a command uses: the local one, or a TieredStore over it when a remote is set."""
    url, mode, where = remote_settings(args, recipes)
    if not url:
        return store
    from orchestrator.store.tiered import TieredStore

    remote = open_remote(url, mode, where)
    tiered = TieredStore(store.root, remote)
    store.close()
    return tiered


def fetch_for_build(store: LocalStore, plan: Any) -> bool:
    """Before a build runs: download the outputs of the hits it will need (each target's final
    step, every input of a task that runs), so that a blob the remote lost or serves corrupt turns
    its task into a miss now rather than failing the build later. True when the caller should
    plan again."""
    fetch = getattr(store, "fetch_outputs", None)
    if fetch is None:
        return False
    from orchestrator.store.base import Blob

    graph, decisions = plan.graph, plan.decisions
    needed = {tp.steps[-1] for tp in graph.targets if tp.steps}
    for tid, d in decisions.items():
        if d.status == "RUN":
            needed |= set(graph.dag.predecessors(tid))
    blobs = [Blob.from_json(b) for tid in sorted(needed)
             if tid in decisions and decisions[tid].status == "HIT" and decisions[tid].entry
             for b in decisions[tid].entry.outputs.values()]
    problems: list[str] = fetch(blobs)
    return bool(problems)
