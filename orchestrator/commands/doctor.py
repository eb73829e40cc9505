"""`deploy-build doctor [RECIPE...]`: this machine's facts, the installed runtimes, and which
targets of the recipes can build and be measured here, and why not. Opens no cache, runs no step."""

from __future__ import annotations

import argparse
import json
from typing import Any

from orchestrator.errors import EXIT_OK
from orchestrator.host.machine import Machine, detect
from orchestrator.plan.fit import Fit, fit_graph, installed

RUNTIMES = ("torch", "transformers", "onnxruntime", "onnxruntime-gpu", "openvino", "nncf",
            "tensorrt", "ai-edge-litert", "litert-torch", "ai-edge-quantizer")


def ort_providers() -> list[str] | None:
    """ONNX Runtime's execution providers (imports onnxruntime: ~0.1 s), None if not installed."""
    if installed("onnxruntime") is None:
        return None
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def runtimes() -> dict[str, Any]:
    out: dict[str, Any] = {name: installed(name) for name in RUNTIMES}
    out["onnxruntime_providers"] = ort_providers()
    return out


def machine_lines(m: Machine) -> list[str]:
    from orchestrator.host.conditions import ISA_FEATURES

    arm = bool({"asimd", "neon"} & m.cpu_flags)
    shown = [f for f in ISA_FEATURES if (f in ("asimd", "asimddp", "asimdhp", "i8mm", "bf16",
                                                "sve", "sve2")) == arm]
    features = [f for f in shown if f in m.cpu_flags]
    absent = [f for f in shown if f not in m.cpu_flags]
    lines = [f"cpu: {m.cpu_model} ({m.cpu_count} cores)",
             f"  features: {' '.join(features) or 'none'}"
             + (f" (absent: {' '.join(absent)})" if absent else ""),
             f"memory: {m.memory_gb:.1f} GB"]
    if m.gpus:
        lines += [f"cuda: driver {m.driver}, CUDA {m.cuda_version or '?'}"]
        lines += [f"  gpu {g.describe()}" for g in m.gpus]
    elif m.device_nodes:
        lines.append(f"cuda: /dev/nvidia{m.device_nodes[0]} exists but no GPU is usable: "
                     f"{m.gpu_problem}")
    else:
        lines.append("cuda: no CUDA device (no /dev/nvidia* device node)")
    return lines


def blocked(graph: Any, fit: Fit) -> dict[str, str]:
    """Every task that cannot run here: those fit skips and everything downstream of them."""
    out = dict(fit.tasks)
    for tid in list(fit.tasks):
        for d in sorted(graph.dag.descendants(tid)):
            out.setdefault(d, f"upstream {graph.task(tid).label} is skipped")
    return out


def target_rows(graph: Any, fit: Fit) -> dict[str, dict[str, Any]]:
    """Per target: ok / skipped with the reason, and which of its tasks run here."""
    out: dict[str, dict[str, Any]] = {}
    skip = blocked(graph, fit)
    for tp in graph.targets:
        label = f"{tp.recipe.name}/{tp.name}"
        positions = {tid: pos for tid in tp.task_ids()
                     for r, t, pos in graph.task(tid).labels if (r, t) == (tp.recipe.name, tp.name)}
        builds = [positions[t] for t in tp.steps if t not in skip]
        measured = [positions[t] for c in tp.checks.values() for t in c.ids() if t not in skip]
        skipped = {positions[t]: skip[t] for t in tp.task_ids() if t in skip}
        out[label] = {"status": "skipped" if label in fit.targets else "ok",
                      "reason": fit.targets.get(label), "runs_here": builds + measured,
                      "not_here": skipped,
                      "hardware": tp.recipe.hardware_of(tp.name).record(),
                      "gates": gates_here(tp, detect())}
    return out


def gates_here(tp: Any, m: Machine) -> list[dict[str, Any]]:
    """Each threshold of the target's gates and whether it is judged on this machine (a
    threshold for machines with CPU features this one lacks is recorded, not judged)."""
    from orchestrator.host.conditions import describe, isa_features, not_here, thresholds

    features = isa_features(m.cpu_flags)
    out = []
    for name, cp in sorted(tp.checks.items()):
        cls = cp.use.info.cls
        for gate in cls.gate_fields:
            for t in thresholds(getattr(cp.use.params, gate, None)):
                why = not_here(t, features)
                out.append({"check": name, "gate": gate, "threshold": describe(t),
                            "judged_here": why is None, "why": why or "judged here"})
    return out

def _recipes(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    if not args.recipes:
        return {}
    from orchestrator.plan.graph import compile_graph
    from orchestrator.recipe import load_recipe
    from orchestrator.recipe.selection import expand_recipes
    from orchestrator.registry import Registry

    paths = expand_recipes(args.recipes)
    allow = args.allow_plugin_path or ()
    recipes = [load_recipe(p, Registry(), allow_plugins=allow) for p in paths]
    graph = compile_graph(recipes, args.targets)
    return target_rows(graph, fit_graph(graph, detect()))


def run(args: argparse.Namespace) -> int:
    m = detect()
    rows = _recipes(args)
    found = runtimes()
    if args.json:
        print(json.dumps({"machine": m.as_json(), "runtimes": found, "targets": rows},
                         indent=2, sort_keys=True))
        return EXIT_OK
    print("machine:")
    print("\n".join(f"  {line}" for line in machine_lines(m)))
    print("runtimes:")
    for name in RUNTIMES:
        extra = ""
        if name == "onnxruntime" and found["onnxruntime_providers"]:
            extra = f" (providers: {', '.join(found['onnxruntime_providers'])})"
        print(f"  {name:<18} {found[name] or 'not installed'}{extra}")
    if rows:
        print("targets:")
    for label, row in rows.items():
        if row["status"] == "ok":
            print(f"  {label}: builds and is measured here")
            for g in row["gates"]:
                print(f"    gate {g['check']}.{g['gate']} {g['threshold']}: {g['why']}")
            continue
        print(f"  {label}: SKIPPED here: {row['reason']}")
        if row["runs_here"]:
            print(f"    still built and cached here: {', '.join(row['runs_here'])}")
        for pos, why in row["not_here"].items():
            print(f"    not here: {pos}: {why}")
    return EXIT_OK
