"""Which recipes and targets a command means: files, folders and globs of recipes; target names
and globs for `-t` (`-t 'cpu-*'`)."""

from __future__ import annotations

import fnmatch
import glob
from pathlib import Path

from orchestrator.errors import FatalError

GLOB_CHARS = set("*?[")


def expand_recipes(specs: list[str]) -> list[str]:
    """Each spec as given, a folder's *.yaml/*.yml files (sorted), or a glob's matches (sorted);
    the same file named twice counts once."""
    out: list[str] = []
    seen: set[Path] = set()  # resolved once each: a nightly names hundreds of recipes
    for spec in specs:
        if Path(spec).is_dir():
            found = sorted(str(p) for p in Path(spec).iterdir()
                           if p.suffix in (".yaml", ".yml") and p.is_file())
            if not found:
                raise FatalError(f"no recipe (*.yaml, *.yml) in the folder {spec}")
        elif GLOB_CHARS & set(spec) and not Path(spec).exists():
            found = sorted(p for p in glob.glob(spec, recursive=True)
                           if p.endswith((".yaml", ".yml")) and Path(p).is_file())
            if not found:
                raise FatalError(f"no recipe matches {spec!r}; give a .yaml file, a folder or a "
                                 "glob such as 'recipes/*.yaml'")
        else:
            found = [spec]
        for p in found:
            resolved = Path(p).resolve()
            if resolved not in seen:
                seen.add(resolved)
                out.append(p)
    return out


def expand_targets(patterns: list[str] | None, known: list[str]) -> list[str] | None:
    """Target names for `-t` names and globs; None (all) when none is given. A name or glob that
    matches no target is an error (with the closest name)."""
    if not patterns:
        return None
    from orchestrator.recipe import _did_you_mean

    chosen: list[str] = []
    for pattern in patterns:
        matches = sorted(t for t in known if fnmatch.fnmatchcase(t, pattern))
        if not matches:
            hint = _did_you_mean(pattern, known) or f"targets: {', '.join(known)}"
            if GLOB_CHARS & set(pattern):
                raise FatalError(f"-t {pattern!r} matches no target; {hint}")
            raise FatalError(f"unknown target {pattern!r} given with -t; {hint}")
        chosen.extend(m for m in matches if m not in chosen)
    return chosen
