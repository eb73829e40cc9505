"""Installed versions of distributions, read without importing them: what a key holds of the
toolchain a task runs with."""

from __future__ import annotations

import os
import re
import sys
from functools import cache

# a task that tokenizes text (calibration, the parity reference) depends on these too
TOKENIZERS = ("tokenizers", "transformers")
# distributions that install the same module under another name (the gpu extra's onnxruntime)
DIST_ALIASES = {"onnxruntime": ("onnxruntime-gpu",)}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def _dist_info_versions() -> dict[str, str]:
    """Normalized distribution name -> version, read from the ``NAME-VERSION.dist-info`` folder
    names on sys.path (the first one wins, as with importlib.metadata): one listing per folder
    instead of a metadata search per name, which a no-op build would pay for every toolchain."""
    found: dict[str, str] = {}
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for n in names:
            if n.endswith(".dist-info"):
                dist, sep, version = n[: -len(".dist-info")].rpartition("-")
                if sep and dist and version:
                    found.setdefault(_normalize(dist), version)
    return found


@cache
def dist_version(name: str) -> str:
    """The installed version of a distribution, or "not-installed"."""
    quick = _dist_info_versions().get(_normalize(name))
    if quick is not None:
        return quick
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        pass
    for alias in DIST_ALIASES.get(name, ()):  # onnxruntime-gpu provides the onnxruntime module
        try:
            return f"{version(alias)} ({alias})"
        except PackageNotFoundError:
            pass
    return "not-installed"
