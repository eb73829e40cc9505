"""`deploy-build steps` and `deploy-build schema`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from orchestrator.errors import EXIT_OK
from orchestrator.registry import Registry


def _registry(args: argparse.Namespace) -> Registry:
    reg = Registry()
    for p in args.plugins:
        reg.load_file(Path(p).resolve())
    return reg


def steps(args: argparse.Namespace) -> int:
    reg = _registry(args)
    for kind, title in (("transform", "steps"), ("check", "checks")):
        print(f"{title}:")
        for name in reg.names(kind):
            info = reg.get(name)
            cls = info.cls
            print(f"  {name}  (version {cls.version}; {info.origin})")
            if cls.description:
                print(f"      {cls.description}")
            for fname, field in cls.Params.model_fields.items():
                value = field.get_default(call_default_factory=True)
                default = "required" if field.is_required() else f"default {json.dumps(value, default=str)}"
                ann = getattr(field.annotation, "__name__", None) or str(field.annotation)
                ann = ann.replace("typing.", "")
                doc = f" - {field.description}" if field.description else ""
                gate = " [gate]" if fname in cls.gate_fields else ""
                print(f"      {fname}: {ann} ({default}){gate}{doc}")
        print()
    return EXIT_OK


def schema(args: argparse.Namespace) -> int:
    from orchestrator.recipe import recipe_json_schema

    print(json.dumps(recipe_json_schema(_registry(args)), indent=2, sort_keys=True))
    return EXIT_OK
