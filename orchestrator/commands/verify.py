"""`deploy-build verify DIR`: check a target folder (or a copy on a serving host) against its
manifest: every artifact and bundle file present with its size and digest (a folder artifact,
such as an OpenVINO IR, re-hashed file by file into its tree digest), nothing unlisted beside
them, and the signature file the one the manifest records. Needs no cache and no model library.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from orchestrator.errors import EXIT_BUILD_FAILED, EXIT_OK, FatalError
from orchestrator.hashing import canonical_json, sha256_bytes, sha256_file, walk_files
from orchestrator.manifest import MANIFEST, RUN_LOG, placed


def _check_file(folder: Path, a: dict[str, Any]) -> list[str]:
    p = folder / a["path"]
    if not p.is_file() or p.is_symlink():
        return [f"{a['path']}: missing (or not a regular file)"]
    if p.stat().st_size != a["size"]:
        return [f"{a['path']}: {p.stat().st_size} bytes, the manifest says {a['size']}"]
    if sha256_file(p) != a["digest"]:
        return [f"{a['path']}: content differs from the manifest (digest)"]
    return []


def _check_tree(folder: Path, a: dict[str, Any]) -> list[str]:
    root = folder / a["path"]
    if not root.is_dir():
        return [f"{a['path']}/: missing folder"]
    files = {rel: [sha256_file(p), p.stat().st_size] for rel, p in walk_files(root)}
    if sha256_bytes(canonical_json({"files": files}).encode()) != a["digest"]:
        return [f"{a['path']}/: its files differ from the manifest (tree digest; "
                f"{len(files)} file(s) here)"]
    return []


def problems(folder: Path, manifest: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if manifest.get("status") != "ok":
        out.append(f"the manifest's status is {manifest.get('status')!r}: not a deployable target "
                   f"({'; '.join(manifest.get('failures', [])) or 'no reason recorded'})")
    listed = placed(manifest)
    for a in listed:
        out.extend(_check_tree(folder, a) if a["kind"] == "tree" else _check_file(folder, a))
    known = {a["path"] for a in listed}
    for rel, _ in walk_files(folder):
        top = rel.split("/", 1)[0]
        if rel not in known and top not in known and rel not in (MANIFEST, RUN_LOG):
            out.append(f"{rel}: not in the manifest")
    bundle = manifest.get("bundle")
    if bundle is None:
        out.append("no bundle section: rebuild with this version of deploy-build for the "
                   "tokenizer, signature and loading example")
    else:
        try:
            sig = json.loads((folder / "signature.json").read_text())
        except (OSError, ValueError):
            sig = None
        if sig is not None and sig != bundle.get("signature"):
            out.append("signature.json differs from the manifest's bundle.signature")
    return out


def run(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise FatalError(f"{folder} holds no {MANIFEST}; give a target folder such as "
                         "build/<recipe>/<target>")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FatalError(f"cannot read {path}: {e}") from None
    found = problems(folder, manifest)
    label = f"{(manifest.get('recipe') or {}).get('name')}/{manifest.get('target')}"
    for p in found:
        print(f"FAIL {label}: {p}")
    n = len(placed(manifest))
    print(f"{label}: {'ok' if not found else f'{len(found)} problem(s)'} ({n} file(s) and folder(s) "
          f"checked against {path})")
    return EXIT_BUILD_FAILED if found else EXIT_OK
