"""`deploy-build steps` and `deploy-build schema`."""

from __future__ import annotations

import argparse
import json
import types
import typing
from pathlib import Path
from typing import Any

from orchestrator.errors import EXIT_OK
from orchestrator.registry import Registry


def _registry(args: argparse.Namespace) -> Registry:
    reg = Registry()
    for p in args.plugins:
        reg.load_file(Path(p).resolve(), where="--plugins")
    return reg


def type_name(tp: Any) -> str:
    """A readable type: Literal values spelt out, element types kept (list[int], str | None)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_name(a) for a in args)}]"
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


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
                ann = type_name(field.annotation)
                doc = f" - {field.description}" if field.description else ""
                gate = " [gate]" if fname in cls.gate_fields else ""
                print(f"      {fname}: {ann} ({default}){gate}{doc}")
        print()
    return EXIT_OK


def schema(args: argparse.Namespace) -> int:
    from orchestrator.recipe import recipe_json_schema

    print(json.dumps(recipe_json_schema(_registry(args)), indent=2, sort_keys=True))
    return EXIT_OK
