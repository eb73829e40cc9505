"""Sets of manifests to compare: a manifest file, a folder of them, or a git revision.

A folder holds build outputs (`<recipe>/<target>/manifest.json`) or committed manifests
(`manifests/<recipe>/<target>.json`); each manifest is named by its own `recipe/target`. A git
revision is read with `git show REV:path` (no checkout): `diff HEAD~1 .` compares the manifests
tracked at HEAD~1 with the ones in the working tree (tracked or not ignored; `build/` is ignored).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from orchestrator.errors import FatalError

SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "cache", "__pycache__"}
Manifests = dict[str, dict[str, Any]]


def is_manifest(data: Any) -> bool:
    return isinstance(data, dict) and {"schema", "target", "steps"} <= set(data)


def label_of(data: dict[str, Any], fallback: str) -> str:
    """recipe/target as the manifest names itself (else fallback, else the target)."""
    recipe = data.get("recipe")
    if isinstance(recipe, dict) and recipe.get("name"):
        return f"{recipe['name']}/{data['target']}"
    return fallback or str(data.get("target", ""))


def parse(text: str, where: str, strict: bool) -> dict[str, Any] | None:
    """The manifest in ``text``; None for JSON that is no manifest unless ``strict``."""
    try:
        data = json.loads(text)
    except ValueError as e:
        if not strict:
            return None
        raise FatalError(f"cannot read manifest {where}: {e}") from None
    if not is_manifest(data):
        if not strict:
            return None
        raise FatalError(f"{where} is not a deploy-build manifest (manifest.json)")
    return dict(data)


def _add(found: Manifests, where: dict[str, str], data: dict[str, Any], path: str,
         fallback: str) -> None:
    label = label_of(data, fallback)
    if label in found:
        raise FatalError(f"two manifests for {label}: {where[label]} and {path}; point at one "
                         "folder of them (e.g. manifests/ or build/)")
    found[label] = data
    where[label] = path


def _fallback(rel: str) -> str:
    p = Path(rel)
    return str(p.parent) if p.name == "manifest.json" else str(p.with_suffix(""))


def from_files(files: dict[str, str], root: str) -> Manifests:
    """Manifests among ``files`` (relative path -> text); files named manifest.json must be ones."""
    found: Manifests = {}
    where: dict[str, str] = {}
    for rel in sorted(files):
        data = parse(files[rel], f"{root}/{rel}" if root else rel, Path(rel).name == "manifest.json")
        if data is not None:
            _add(found, where, data, f"{root}/{rel}" if root else rel, _fallback(rel))
    return found


def _walk(folder: Path) -> list[Path]:
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        out.extend(Path(dirpath) / f for f in sorted(filenames)
                   if f.endswith(".json") and f != "run-log.json")
    return out


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise FatalError(f"cannot read manifest {path}: {e}") from None


def from_path(path: Path, files: list[Path] | None = None) -> Manifests:
    if path.is_file():
        data = parse(_read_text(path), str(path), strict=True)
        assert data is not None
        return {"": data}
    if not path.is_dir():
        raise FatalError(f"{path} is neither a manifest, a folder of them, nor a git revision")
    paths = _walk(path) if files is None else files
    texts = {p.relative_to(path).as_posix(): _read_text(p) for p in paths}
    found = from_files(texts, str(path))
    if not found:
        raise FatalError(f"no manifest under {path} (build/<recipe>/<target>/manifest.json or "
                         "manifests/<recipe>/<target>.json)")
    return found


def git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def is_revision(spec: str, cwd: Path) -> bool:
    return not spec.startswith("-") and git(["rev-parse", "--verify", "--quiet",
                                             f"{spec}^{{commit}}"], cwd) is not None


def _repo(path: Path) -> tuple[Path, str]:
    """The work tree holding ``path`` and path's place in it (posix, '' for the top)."""
    folder = path if path.is_dir() else path.parent
    top = git(["rev-parse", "--show-toplevel"], folder)
    if top is None:
        raise FatalError(f"{path} is not inside a git work tree, so a revision cannot be read")
    root = Path(top.strip())
    rel = path.resolve().relative_to(root.resolve()).as_posix()
    return root, "" if rel == "." else rel


def from_revision(rev: str, root: Path, prefix: str) -> Manifests:
    listing = git(["ls-tree", "-r", "--name-only", "-z", rev, "--", prefix or "."], root)
    if listing is None:
        raise FatalError(f"cannot list {prefix or '.'} at revision {rev}")
    texts = {}
    for name in sorted(n for n in listing.split("\0") if n.endswith(".json")):
        if Path(name).name == "run-log.json":
            continue
        text = git(["show", f"{rev}:{name}"], root)
        if text is not None:
            texts[name] = text
    return from_files(texts, f"{rev}:")


def working_tree(path: Path) -> Manifests:
    """The manifests under ``path`` that git tracks or would track (ignored folders left out)."""
    root, prefix = _repo(path)
    listing = git(["ls-files", "-z", "--cached", "--others", "--exclude-standard", "--",
                   prefix or "."], root)
    names = [n for n in (listing or "").split("\0") if n.endswith(".json")]
    files = [root / n for n in names if (root / n).is_file() and Path(n).name != "run-log.json"]
    texts = {p.relative_to(root).as_posix(): _read_text(p) for p in files}
    return from_files(texts, str(root))


def load_pair(old: str, new: str, cwd: Path | None = None) -> tuple[Manifests, Manifests]:
    """The two sides of a diff: paths, or a git revision beside a path (or two revisions)."""
    cwd = cwd or Path.cwd()
    old_p, new_p = Path(old), Path(new)
    old_rev = not old_p.exists() and is_revision(old, cwd)
    new_rev = not new_p.exists() and is_revision(new, cwd)
    if not old_rev and not new_rev:
        if old_p.is_file() != new_p.is_file() and old_p.exists() and new_p.exists():
            raise FatalError("compare a manifest with a manifest, or a folder with a folder "
                             f"({old} and {new} are one of each)")
        return from_path(old_p), from_path(new_p)
    if old_rev and new_rev:
        root, _ = _repo(cwd)
        return _nonempty(from_revision(old, root, ""), old), _nonempty(from_revision(new, root, ""), new)
    rev, path = (old, new_p) if old_rev else (new, old_p)
    if not path.exists():
        raise FatalError(f"{path} is neither a manifest, a folder of them, nor a git revision")
    root, prefix = _repo(path)
    at_rev = from_revision(rev, root, prefix)
    here = working_tree(path) if path.is_dir() else from_path(path)
    if path.is_file():
        at_rev = {"": next(iter(at_rev.values()))} if at_rev else {}
    if not at_rev and not here:
        raise FatalError(f"no manifest under {path}, neither at revision {rev} nor in the work "
                         "tree (tracked or not ignored); committed manifests are written by "
                         "--manifests DIR")
    return (at_rev, here) if old_rev else (here, at_rev)


def _nonempty(found: Manifests, rev: str) -> Manifests:
    if not found:
        raise FatalError(f"no manifest tracked at revision {rev}")
    return found


# Fields that two honest builds of the same inputs may disagree on: measured latencies and
# everything the benchmark saw; parity figures, where the CPU's instruction set (AVX-512, VNNI,
# AMX) changes the numerics. The digests of engines recorded as not byte-reproducible (a step
# class with `reproducible = False`, as TensorRT plans are) are added by measured(). Here, in a
# standard-library module, because `verify` reads them too.
MEASURED = (
    "benchmark.*",
    "checks.*.max_abs_diff", "checks.*.mean_cosine", "checks.*.min_cosine",
    "checks.*.top1_agreement", "search.*",
)


def measured(manifest: dict[str, Any]) -> list[str]:
    """The dotted fields two honest builds of one recipe may disagree on ."""
    patterns = list(MEASURED)
    steps = manifest.get("steps") or []
    first = first_unreproducible(manifest)
    if first is not None:
        patterns += [f"steps.{i}.{f}" for i in range(first, len(steps))
                     for f in ("key", "outputs.*.digest", "outputs.*.size", "inputs.*.digest",
                               "inputs.*.size", "metrics.*")]
        patterns += ["artifacts.*.digest", "artifacts.*.size", "checks.*.key", "bundle.files.*"]
    return patterns


def first_unreproducible(manifest: dict[str, Any]) -> int | None:
    steps = manifest.get("steps") or []
    return next((i for i, s in enumerate(steps)
                 if isinstance(s, dict) and s.get("reproducible") is False), None)
