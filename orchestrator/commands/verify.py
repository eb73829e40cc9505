"""`deploy-build verify DIR [--against MANIFEST|REV]`: check a target folder (or a copy on a
serving host) against a manifest: every artifact and bundle file present with its size and
digest (a folder artifact, such as an OpenVINO IR, re-hashed file by file into its tree digest),
and nothing else in the folder.

The folder is walked here, with lstat and never through a link (not with hashing.walk_files,
which defines every tree digest and skips hidden entries): a hidden file or folder anywhere, an
empty folder, a symbolic link, a FIFO, socket or device, and a file the manifest does not list
are each refused. Only `manifest.json` and `run-log.json` at the top are exempt (the run log is
volatile: durations, host); the run says so.

Without --against the folder is checked against its own manifest, which whoever could change the
files could change too. `--against manifests/<recipe>/<target>.json` (the committed manifest a
pull request reviewed) or `--against REV` (that manifest as tracked at a git revision of the
repository it runs in) checks the bytes against that one, and reports how the folder's own
manifest differs from it. Engines after a step recorded `"reproducible": false` (TensorRT plans)
differ from build to build: against another manifest they read "not comparable" (a note; they
are checked against the folder's own manifest), not as failures.

Needs no cache and no model library: it imports only the standard library and light modules of
this project (no pydantic, no torch; tests/reliability/test_verify_tamper.py checks).
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from orchestrator.errors import EXIT_BUILD_FAILED, EXIT_OK, FatalError
from orchestrator.hashing import NotRegularFile, canonical_json, file_kind, open_regular, sha256_bytes
from orchestrator.review import manifestset
from orchestrator.review.compare import flatten
from orchestrator.review.manifestset import MEASURED, first_unreproducible, measured  # noqa: F401

# The same names as orchestrator.targets.manifest's, which this module cannot import (it imports
# pydantic); a test keeps them equal.
MANIFEST = "manifest.json"
RUN_LOG = "run-log.json"
EXEMPT = {MANIFEST: "the manifest itself", RUN_LOG: "the build's volatile facts: durations, host"}
RECOPY = "copy the target folder again from the build (or rebuild it)"


def placed(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Every file or tree of a target folder: the artifacts and the bundle's files."""
    return [*manifest.get("artifacts", []), *(manifest.get("bundle") or {}).get("files", [])]


def _show(rel: str) -> str:
    """A path as printable text (a name may hold control characters or undecodable bytes)."""
    text = rel.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@dataclass
class Walk:
    """A target folder as lstat saw it: its regular files, what every entry is, the problems."""

    files: dict[str, Path] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    empty: list[str] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)


def _entry_problem(rel: str, name: str, path: str, mode: int) -> str | None:
    kind = file_kind(mode)
    if name.startswith("."):
        return (f"{_show(rel)}: a hidden {kind}; a build makes none, and tree digests skip hidden "
                "entries, so nothing else would see it: remove it")
    if stat.S_ISLNK(mode):
        try:
            to = f" to {_show(os.readlink(path))}"
        except OSError:
            to = ""
        return (f"{_show(rel)}: a symbolic link{to}; a target folder holds only regular files "
                f"and folders, and verify never follows a link: remove it and {RECOPY}")
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        return (f"{_show(rel)}: a {kind}, not a regular file; a build makes none: remove it and "
                f"{RECOPY}")
    return None


def walk(root: Path) -> Walk:
    """Every entry under root, by lstat, links never followed; hidden folders not entered."""
    w = Walk()
    pending = [("", root)]
    while pending:
        rel, folder = pending.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            w.problems.append((rel, f"{_show(rel or '.')}/: cannot be listed ({e.strerror}): "
                                    "check its permissions"))
            continue
        if not entries and rel:
            w.empty.append(rel)
        for entry in entries:
            r = f"{rel}/{entry.name}" if rel else entry.name
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError:  # gone since the listing
                continue
            w.kinds[r] = file_kind(mode)
            problem = _entry_problem(r, entry.name, entry.path, mode)
            if problem is not None:
                w.problems.append((r, problem))
            elif stat.S_ISDIR(mode):
                pending.append((r, Path(entry.path)))
            else:
                w.files[r] = Path(entry.path)
    return w


def _digest(path: Path) -> tuple[str, int]:
    """sha256 and size of a regular file, opened without following a link (O_NOFOLLOW)."""
    with open_regular(path, follow=False) as f:
        size = os.fstat(f.fileno()).st_size
        return hashlib.file_digest(f, "sha256").hexdigest(), size


def _safe(rel: Any) -> bool:
    """A manifest path that stays inside the folder: relative, no '..', nothing hidden."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel:
        return False
    return all(p and not p.startswith(".") for p in PurePosixPath(rel).parts) and \
        PurePosixPath(rel).as_posix() == rel


@dataclass
class Check:
    """One manifest entry to check: against which manifest (``whom``, for the message)."""

    entry: dict[str, Any]
    whom: str


def _check_file(w: Walk, c: Check) -> list[str]:
    rel = c.entry["path"]
    if rel not in w.kinds:
        return [f"{rel}: missing; {RECOPY}"]
    if rel not in w.files:  # a folder; a link or a FIFO was reported by the walk
        return [f"{rel}: a {w.kinds[rel]} where {c.whom} lists a file; {RECOPY}"] \
            if w.kinds[rel] == "folder" else []
    try:
        digest, size = _digest(w.files[rel])
    except NotRegularFile as e:
        return [f"{rel}: {e.strerror} (it changed while verify read it); {RECOPY}"]
    if size != c.entry.get("size"):
        return [f"{rel}: {size} bytes, {c.whom} says {c.entry.get('size')}; {RECOPY}"]
    if digest != c.entry.get("digest"):
        return [f"{rel}: content differs from {c.whom} (digest); {RECOPY}"]
    return []


def _check_tree(w: Walk, c: Check) -> list[str]:
    rel = c.entry["path"]
    kind = w.kinds.get(rel)
    if kind is None:
        return [f"{rel}/: missing; {RECOPY}"]
    if kind != "folder":  # a link or a FIFO was reported by the walk
        return [f"{rel}: a {kind} where {c.whom} lists a folder; {RECOPY}"] \
            if kind == "regular file" else []
    files: dict[str, list[Any]] = {}
    try:
        for r, p in w.files.items():
            if r.startswith(f"{rel}/"):
                files[r[len(rel) + 1:]] = list(_digest(p))
    except NotRegularFile as e:
        return [f"{rel}/: {_show(str(e.filename))}: {e.strerror}; {RECOPY}"]
    if sha256_bytes(canonical_json({"files": files}).encode()) != c.entry.get("digest"):
        return [f"{rel}/: its files differ from {c.whom} (tree digest; {len(files)} file(s) here, "
                f"{sum(s for _, s in files.values())} bytes, {c.whom} says {c.entry.get('size')}); "
                f"{RECOPY}"]
    return []


def _unlisted(w: Walk, listed: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Files and empty folders no entry accounts for (the exempt files at the top aside)."""
    files = {a["path"] for a in listed if a.get("kind") != "tree"}
    trees = {a["path"] for a in listed if a.get("kind") == "tree"}
    out = []
    for rel in w.files:
        if rel in files or rel in EXEMPT or any(rel.startswith(f"{t}/") for t in trees):
            continue
        out.append((rel, f"{_show(rel)}: not in the manifest; a build puts nothing else in a target "
                         "folder: remove it (or rebuild, if it belongs to the engine)"))
    out += [(rel, f"{_show(rel)}/: an empty folder; a build makes none: remove it")
            for rel in w.empty if rel not in trees]
    return out


@dataclass
class Report:
    fails: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked: int = 0


def _entries(ref: dict[str, Any], own: dict[str, Any] | None, where: str | None,
             report: Report) -> list[Check]:
    """What each listed path is checked against: the reference manifest, or, for an engine
    after a step that is not byte-reproducible, the folder's own manifest (a note)."""
    whom = "the manifest" if where is None else f"the reviewed manifest ({where})"
    first = first_unreproducible(ref) if where is not None else None
    artifacts = {id(a) for a in ref.get("artifacts", [])}
    mine = {a.get("path"): a for a in placed(own or {})}
    checks = []
    for a in placed(ref):
        if not isinstance(a, dict) or not _safe(a.get("path")):
            report.fails.append(f"{whom} lists an unsafe path {a.get('path')!r} (absolute, '..' or "
                                f"hidden): not checked; {RECOPY}" if isinstance(a, dict) else
                                f"{whom} lists a malformed entry {a!r}")
            continue
        if first is None or id(a) not in artifacts:
            checks.append(Check(a, whom))
            continue
        step = ref["steps"][first]
        mark = "/" if a.get("kind") == "tree" else ""
        if a["path"] not in mine:
            report.notes.append(f"{a['path']}{mark}: not comparable with {whom}: step "
                                f"{first + 1} ({step.get('step')}) is not byte-reproducible, and "
                                "the folder's own manifest does not list it")
            continue
        report.notes.append(f"{a['path']}{mark}: not comparable with {whom}: step {first + 1} "
                            f"({step.get('step')}) is not byte-reproducible (each build's engine "
                            "differs); checked against the folder's own manifest instead")
        checks.append(Check(mine[a["path"]], "the folder's own manifest"))
    return checks


def _bundle(folder: Path, ref: dict[str, Any], whom: str, report: Report) -> None:
    bundle = ref.get("bundle")
    if bundle is None:
        report.notes.append("no bundle section (tokenizer, signature.json, load_example.py): "
                            "builds make one for ONNX and OpenVINO engines only; for one of those, "
                            "rebuild with this version of deploy-build")
        return
    try:
        with open_regular(folder / "signature.json", follow=False) as f:
            sig = json.loads(f.read())
    except (OSError, ValueError):
        return  # missing or not a file: reported with the bundle's files
    if sig != bundle.get("signature"):
        report.fails.append(f"signature.json differs from bundle.signature in {whom}; {RECOPY}")


def _own_vs_reference(own: dict[str, Any] | None, own_problem: str | None, ref: dict[str, Any],
                      where: str, report: Report) -> None:
    """Say how the folder's own manifest differs from the reviewed one."""
    if own is None:
        report.fails.append(own_problem or f"{MANIFEST}: missing; a target folder carries its "
                                           f"manifest: {RECOPY}")
        return
    if _label(own) != _label(ref):
        report.fails.append(f"{MANIFEST} is the manifest of {_label(own)}, the reviewed one "
                            f"({where}) of {_label(ref)}: give the reviewed manifest of this target")
        return
    a, b = flatten(own, lists=True), flatten(ref, lists=True)
    differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if not differ:
        return
    patterns = measured(ref)
    loose = [k for k in differ if any(fnmatch.fnmatchcase(k, p) for p in patterns)]
    strict = [k for k in differ if k not in loose]
    if strict:
        shown = ", ".join(strict[:8]) + (f" and {len(strict) - 8} more" if len(strict) > 8 else "")
        report.fails.append(f"{MANIFEST} differs from the reviewed manifest ({where}) at {shown}: "
                            "this folder was not built from what was reviewed; deploy the reviewed "
                            "build, or review this one (deploy-build diff)")
    if loose:
        report.notes.append(f"{MANIFEST} differs from the reviewed manifest ({where}) only in "
                            f"measured fields ({len(loose)}: {', '.join(loose[:3])}"
                            f"{', ...' if len(loose) > 3 else ''}), which two honest builds may "
                            "disagree on")


def check(folder: Path, ref: dict[str, Any], own: dict[str, Any] | None = None,
          where: str | None = None, own_problem: str | None = None) -> Report:
    """Check the folder against ``ref``: its own manifest (where None) or the reviewed one found
    at ``where`` (then ``own`` is the folder's own, compared with it; ``own_problem`` why it
    could not be read)."""
    report = Report()
    if ref.get("status") != "ok":
        report.fails.append(f"the manifest's status is {ref.get('status')!r}: not a deployable "
                            f"target ({'; '.join(ref.get('failures', [])) or 'no reason recorded'})")
    if where is not None:
        _own_vs_reference(own, own_problem, ref, where, report)
    w = walk(folder)
    problems = list(w.problems)
    checks = _entries(ref, own, where, report)
    for c in checks:
        found = (_check_tree if c.entry.get("kind") == "tree" else _check_file)(w, c)
        problems += [(c.entry["path"], p) for p in found]
    problems += _unlisted(w, [c.entry for c in checks])
    report.fails += [p for _, p in sorted(problems)]
    report.checked = len(checks)
    _bundle(folder, ref, "the manifest" if where is None else f"the reviewed manifest ({where})",
            report)
    present = [name for name in EXEMPT if w.kinds.get(name) == "regular file"]
    if present:
        also = {MANIFEST: "; compared with the reviewed one"} if where is not None else {}
        report.notes.append("not checked: " + ", ".join(
            f"{name} ({EXEMPT[name]}{also.get(name, '')})" for name in present))
    return report


def read_own(folder: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The folder's own manifest, or why it cannot be used (None, None: there is none)."""
    path = folder / MANIFEST
    try:
        with open_regular(path, follow=False) as f:
            text = f.read()
    except FileNotFoundError:
        return None, None
    except NotRegularFile as e:
        return None, f"{MANIFEST}: {e.strerror}; {RECOPY}"
    except OSError as e:
        return None, f"cannot read {path}: {e.strerror}"
    try:
        data = manifestset.parse(text.decode("utf-8"), str(path), strict=True)
    except (FatalError, UnicodeDecodeError) as e:
        return None, f"cannot read {path}: {e}"
    return data, None


def _label(m: dict[str, Any]) -> str:
    return manifestset.label_of(m, "") or "?"


def _revision_candidates(rev: str, root: Path, recipe: str, target: str) -> list[str]:
    listing = manifestset.git(["ls-tree", "-r", "--name-only", "-z", rev], root)
    if listing is None:
        raise FatalError(f"cannot list the files of revision {rev} in {root}")
    out = []
    for name in listing.split("\0"):
        parts = PurePosixPath(name).parts
        if parts[-2:] == (recipe, f"{target}.json") or parts[-3:] == (recipe, target, MANIFEST):
            out.append(name)
    return out


def at_revision(rev: str, label: str, cwd: Path) -> tuple[dict[str, Any], str]:
    """The manifest of ``label`` (recipe/target) tracked at git revision ``rev``, as `diff REV .`
    finds manifests: `<dir>/<recipe>/<target>.json` or `<dir>/<recipe>/<target>/manifest.json`."""
    top = manifestset.git(["rev-parse", "--show-toplevel"], cwd)
    if top is None:
        raise FatalError(f"{cwd} is not inside a git work tree, so revision {rev} cannot be read")
    root = Path(top.strip())
    recipe, _, target = label.partition("/")
    found: dict[str, dict[str, Any]] = {}
    for name in _revision_candidates(rev, root, recipe, target):
        text = manifestset.git(["show", f"{rev}:{name}"], root)
        data = manifestset.parse(text, f"{rev}:{name}", strict=False) if text is not None else None
        if data is not None and _label(data) == label:
            found[name] = data
    if not found:
        raise FatalError(f"no manifest of {label} tracked at revision {rev} in {root} (looked for "
                         f"<dir>/{recipe}/{target}.json and <dir>/{recipe}/{target}/{MANIFEST}); "
                         "commit the manifests a build writes with --manifests DIR, or give the "
                         "file: --against FILE")
    if len({canonical_json(d) for d in found.values()}) > 1:
        raise FatalError(f"revision {rev} tracks different manifests of {label}: "
                         f"{', '.join(sorted(found))}; pick one: git show {rev}:PATH > ref.json "
                         "and --against ref.json")
    name = sorted(found)[0]
    return found[name], f"{rev}:{name}"


def reference(spec: str, own: dict[str, Any] | None, cwd: Path) -> tuple[dict[str, Any], str]:
    """The manifest --against names: a manifest file, a folder of them, or a git revision."""
    path = Path(spec)
    label = _label(own) if own is not None else None
    if path.is_file():
        return manifestset.from_path(path)[""], str(path)
    if path.is_dir():
        if label is None:
            raise FatalError(f"--against {spec} is a folder, and the target folder's own manifest "
                             "is missing or unreadable, so which target to take is unknown: give "
                             "the file, --against <dir>/<recipe>/<target>.json")
        found = manifestset.from_path(path)
        if label not in found:
            raise FatalError(f"no manifest of {label} under {path}; give the file: --against FILE")
        return found[label], f"{label} in {path}"
    if not manifestset.is_revision(spec, cwd):
        raise FatalError(f"--against {spec}: no such manifest file or folder, and not a git "
                         f"revision of the repository here ({cwd})")
    if label is None:
        raise FatalError(f"the folder's own manifest is missing or unreadable, so which target's "
                         f"manifest to take from revision {spec} is unknown: give the file, "
                         "--against <dir>/<recipe>/<target>.json")
    return at_revision(spec, label, cwd)


def run(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    if not folder.is_dir():
        raise FatalError(f"{folder} is not a folder; give a target folder such as "
                         "build/<recipe>/<target>")
    own, unusable = read_own(folder)
    against = getattr(args, "against", None)
    if against is None and own is None:
        if unusable is None:
            raise FatalError(f"{folder} holds no {MANIFEST}; give a target folder such as "
                             "build/<recipe>/<target>")
        if not unusable.startswith(f"{MANIFEST}:"):
            raise FatalError(unusable)
        print(f"FAIL {folder}: {unusable}")
        return EXIT_BUILD_FAILED
    if against is None:
        assert own is not None
        ref, where, source = own, None, str(folder / MANIFEST)
    else:
        ref, source = reference(against, own, Path.cwd())
        where = source
    report = check(folder, ref, own, where, unusable)
    label = _label(ref)
    for p in report.fails:
        print(f"FAIL {label}: {p}")
    for n in report.notes:
        print(f"note {label}: {n}")
    verdict = "ok" if not report.fails else f"{len(report.fails)} problem(s)"
    print(f"{label}: {verdict} ({report.checked} file(s) and folder(s) checked against {source})")
    return EXIT_BUILD_FAILED if report.fails else EXIT_OK
