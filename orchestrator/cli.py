"""The `deploy-build` command line: parse, dispatch, map errors to exit codes.

Only the standard library is imported here, so `--help` answers at once; each command imports
what it needs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from orchestrator import __version__

COMMANDS = ("build", "explain", "steps", "schema", "diff", "graph", "report", "verify", "cache",
            "doctor")

EPILOG = """\
commands:
  deploy-build RECIPE [RECIPE...]    build (same as `deploy-build build RECIPE`)
  deploy-build explain RECIPE        why each task of a target would run
  deploy-build steps                 list the available steps and checks with their params
  deploy-build schema                print the recipe JSON Schema (for editors)
  deploy-build diff OLD NEW          compare two manifests, folders or a git revision (HEAD~1 .)
                                     (--format text|md|json; exit 2 on a broken --fail-on rule)
  deploy-build graph RECIPE...       the task DAG (--format mermaid|dot), marked from the last build
  deploy-build report [--out FILE]   an HTML report (table, charts, trend) from the build history
  deploy-build verify DIR            check a target folder (a bundle) against its manifest
  deploy-build cache verify          re-hash every blob; remove corrupt ones and their entries
  deploy-build cache ls|stats|gc|push|pull   inspect, collect, and sync with a remote cache
  deploy-build doctor [RECIPE...]    this machine's CPU, GPUs and runtimes; which targets can
                                     build and be measured here, and why not

exit codes: 0 ok, 1 user error (bad recipe or flag), 2 build failed (a task or a check gate),
3 internal error (the traceback goes to a deploy-build-crash-*.log file in the temp folder),
130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""


class _Parser(argparse.ArgumentParser):
    """argparse that exits 1 on a usage error, like every other user error of this tool."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(1, f"error: {message}; see `{self.prog} --help`\n")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipes", nargs="+", metavar="RECIPE", help="recipe YAML file(s)")
    p.add_argument("-t", "--target", action="append", dest="targets", metavar="TARGET",
                   help="only this target (repeatable)")
    p.add_argument("--cache", metavar="DIR", default=None,
                   help="local cache folder (default: $DEPLOY_BUILD_CACHE or cache/ in the project)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="where targets are materialized (default: build/ in the project)")
    p.add_argument("--allow-plugin-path", action="append", default=[], metavar="PATH",
                   dest="allow_plugin_path",
                   help="allow recipe plugins at this file or folder outside the recipe's project "
                        "(repeatable; also $DEPLOY_BUILD_ALLOW_PLUGINS). A plugin is code that "
                        "runs with your rights: allow only what you trust")
    _remote_flags(p)


def _remote_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--remote-cache", metavar="URL", default=None,
                   help="a shared cache: s3://bucket/prefix or file:///shared/folder (default: "
                        "$DEPLOY_BUILD_REMOTE_CACHE, else the recipe's cache.remote; 'none' for none)")
    p.add_argument("--remote-cache-mode", choices=("read", "write", "readwrite"), default=None,
                   help="read: use the remote, never write it; write: fill it, never read it; "
                        "readwrite (the default; also $DEPLOY_BUILD_REMOTE_CACHE_MODE)")


def _review_parsers(sub: Any) -> None:
    """graph, report and verify: for pull requests, nightlies and serving hosts."""
    g = sub.add_parser("graph", help="the task DAG as Mermaid or Graphviz dot, marked hit/run/"
                                     "fail/skip from the last build")
    _common(g)
    g.add_argument("--format", choices=("mermaid", "dot"), default="mermaid",
                   help="mermaid (default; renders in GitHub PR descriptions) or dot")
    g.set_defaults(func="orchestrator.commands.graph:run")

    rp = sub.add_parser("report", help="one self-contained HTML page (table, charts, trend) from "
                                       "the build history")
    rp.add_argument("--out", metavar="FILE", default=None,
                    help="where to write it (default: build/report.html in the project)")
    rp.add_argument("--history", metavar="FILE", default=None,
                    help="the history file (default: beside --manifests DIR, else in the cache)")
    rp.add_argument("--manifests", metavar="DIR", default=None,
                    help="the committed manifests folder the builds were given")
    rp.add_argument("--cache", metavar="DIR", default=None,
                    help="local cache folder (default: $DEPLOY_BUILD_CACHE or cache/ in the project)")
    rp.add_argument("--branch", metavar="NAME", default=None,
                    help="draw only the lines this branch recorded ('all': every line; default: "
                         "main, else master, else every line)")
    rp.set_defaults(func="orchestrator.commands.report:run")

    vf = sub.add_parser("verify", help="check a target folder (or a copy of it) against its manifest")
    vf.add_argument("folder", metavar="DIR", help="a target folder, e.g. build/bert-edge/cpu-int8")
    vf.add_argument("--against", metavar="MANIFEST|REV", default=None,
                    help="check the bytes against this manifest instead of the folder's own: a "
                         "committed one (manifests/<recipe>/<target>.json, or a folder of them) or "
                         "a git revision of the repository here (its tracked manifest of this "
                         "target); also reports how the folder's own manifest differs from it")
    vf.set_defaults(func="orchestrator.commands.verify:run")


def _build_parser(sub: Any) -> None:
    """`deploy-build build` (the default command) and its flags."""
    b = sub.add_parser("build", help="build recipes (the default command)")
    _common(b)
    b.add_argument("--dry-run", "--plan", action="store_true", dest="dry_run",
                   help="print the plan (HIT / RUN with reasons / SKIP with why); run nothing")
    b.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1,
                   help="cpu tokens for parallel tasks (default: the core count)")
    b.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="where tasks run: worker processes here (default) or a Ray cluster")
    b.add_argument("--ray-address", metavar="ADDR", default=None,
                   help="the Ray cluster to run on (default: $RAY_ADDRESS, else a new local one)")
    mode = b.add_mutually_exclusive_group()
    mode.add_argument("--keep-going", action="store_false", dest="fail_fast",
                      help="on a failure, finish every independent task (default)")
    mode.add_argument("--fail-fast", action="store_true", dest="fail_fast",
                      help="stop at the first failed task")
    b.set_defaults(fail_fast=False)
    b.add_argument("--lock-timeout", type=float, default=None, metavar="SECONDS", dest="lock_timeout",
                   help="fail a task that waited this long for another build's lock (a benchmark "
                        "holds the machine alone; two builds never run one task twice), naming "
                        "the holder (default: $DEPLOY_BUILD_LOCK_TIMEOUT, else wait as long as it "
                        "takes: a queued benchmark is legitimate)")
    b.add_argument("--force", action="store_true", help="re-run every selected task")
    b.add_argument("--rebench", action="store_true", help="re-run benchmark checks")
    b.add_argument("--only", metavar="TARGET/POSITION",
                   help="run only this task (and any upstream task that is not cached), e.g. "
                        "cpu-int8/3:ort-quantize; the failure message of a task prints this form")
    b.add_argument("--in-process", action="store_true", dest="in_process",
                   help="with --only: run that task in this process, in the foreground, on its "
                        "cached inputs (breakpoint() works); nothing is cached")
    b.add_argument("--manifests", metavar="DIR", default=None,
                   help="also write each target built and judged here to DIR/<recipe>/<target>.json "
                        "(committed manifests; a target skipped here is left as it was); the "
                        "history file goes beside DIR")
    b.add_argument("--json", action="store_true",
                   help="print a JSON summary on stdout at the end (progress stays on stderr)")
    b.add_argument("--strict", action="store_true",
                   help="fail a target (exit 2) when a gate is unjudged: a noisy figure whose "
                        "interval straddles the threshold (default: a warning, exit 0)")
    b.add_argument("--require-all", action="store_true", dest="require_all",
                   help="exit 2 when a target is skipped because this machine lacks its hardware "
                        "or runtime (default: skipped targets are reported, exit 0)")
    b.set_defaults(func="orchestrator.commands.build:run")


def _info_parsers(sub: Any) -> None:
    """`deploy-build steps` and `deploy-build schema`."""
    s = sub.add_parser("steps", help="list steps and checks with their params and origin")
    s.add_argument("--plugins", nargs="*", default=[], metavar="FILE",
                   help="also load these plugin files; listing imports them and every installed "
                        "step entry point, which runs their code")
    s.set_defaults(func="orchestrator.commands.info:steps")

    sc = sub.add_parser("schema", help="print the recipe JSON Schema")
    sc.add_argument("--plugins", nargs="*", default=[], metavar="FILE",
                    help="also load these plugin files (importing them runs their code)")
    sc.set_defaults(func="orchestrator.commands.info:schema")


def parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``only="build"``, just that command (what a build parses:
    building every other command's parser would cost a no-op build a few ms)."""
    top = _Parser(
        prog="deploy-build",
        description="Compile YAML deployment recipes into cached, verified, benchmarked engines.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"deploy-build {__version__}")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    _build_parser(sub)
    if only == "build":
        return top

    e = sub.add_parser("explain", help="why each task of a target would run")
    _common(e)
    e.add_argument("--json", action="store_true", help="print the decisions as JSON")
    e.set_defaults(func="orchestrator.commands.build:explain")

    _info_parsers(sub)

    d = sub.add_parser("diff", help="compare two manifests (files, folders of them, or a git "
                                    "revision of the tracked ones)")
    d.add_argument("old", help="a manifest, a folder of them, or a git revision (HEAD~1, main)")
    d.add_argument("new", help="a manifest, a folder of them (`.`, manifests/), or a git revision")
    d.add_argument("--format", choices=("text", "md", "json"), default="text",
                   help="text (default), md (a pull-request comment) or json")
    d.add_argument("--fail-on", action="append", default=[], metavar="RULE",
                   help="exit 2 when a rule is broken, e.g. 'parity.min_cosine<0.99' or "
                        "'latency+10%%' (latency is judged on a paired figure: --rebench, else "
                        "the speed-up vs PyTorch each run measured; the same engine re-measured "
                        "never regresses)")
    d.add_argument("--rebench", action="store_true",
                   help="time the base and the head engine of each changed target alternately in "
                        "one window on this machine (engines from the folders given, else from "
                        "the cache by digest) and judge latency on head/base with its interval")
    d.add_argument("--cache", metavar="DIR", default=None,
                   help="with --rebench: the local cache holding the engines (default: "
                        "$DEPLOY_BUILD_CACHE or cache/ in the project)")
    d.add_argument("--lock-timeout", type=float, default=None, metavar="SECONDS",
                   dest="lock_timeout", help="with --rebench: give up waiting for the machine "
                   "after this long (default: wait)")
    _remote_flags(d)
    d.set_defaults(func="orchestrator.commands.diff:run")

    _review_parsers(sub)

    c = sub.add_parser("cache", help="inspect and maintain the local (and remote) cache")
    _cache_commands(c)
    _doctor(sub)
    return top


def _doctor(sub: argparse._SubParsersAction[_Parser]) -> None:
    dr = sub.add_parser("doctor", help="this machine's facts and runtimes; which targets of the "
                                       "recipes can build and be measured here, and why not")
    dr.add_argument("recipes", nargs="*", metavar="RECIPE", help="recipe YAML file(s)")
    dr.add_argument("-t", "--target", action="append", dest="targets", metavar="TARGET",
                    help="only this target (repeatable)")
    dr.add_argument("--allow-plugin-path", action="append", default=[], metavar="PATH",
                    dest="allow_plugin_path", help="as for build")
    dr.add_argument("--json", action="store_true", help="print the report as JSON")
    dr.set_defaults(func="orchestrator.commands.doctor:run")


def _cache_commands(c: argparse.ArgumentParser) -> None:
    csub = c.add_subparsers(dest="cache_command", metavar="ACTION", parser_class=_Parser)
    actions = {
        "ls": "list the action entries (with --remote-cache: and which the remote holds)",
        "stats": "per step: hits (from the remote among them), runs, hit rate, entries, bytes",
        "gc": "remove entries unused for --max-age, then the least recently used until the "
              "cache fits --max-size; never what --keep manifests name; then unneeded blobs",
        "verify": "re-hash every blob and tree; remove corrupt ones and the action entries that "
                  "name them (exit 2 if any); with --remote-cache, the remote's too",
        "push": "upload every local entry the remote lacks (blobs first)",
        "pull": "download every remote entry missing here, blobs verified",
        "unlock": "break the remote lease on KEY (a prefix as printed by a waiting build), "
                  "whoever holds it: a lease of a build that died, or a forged one",
    }
    for name, text in actions.items():
        a = csub.add_parser(name, help=text, description=text)
        a.add_argument("--cache", metavar="DIR", default=None,
                       help="local cache folder (default: $DEPLOY_BUILD_CACHE or cache/ in the "
                            "project)")
        if name != "gc":
            _remote_flags(a)
        else:
            a.add_argument("--remote-cache", metavar="URL", default=None,
                           help="collect this remote cache too (given here only, never taken "
                                "from the environment)")
        if name in ("ls", "stats"):
            a.add_argument("--json", action="store_true", help="print JSON")
        if name == "unlock":
            a.add_argument("key", metavar="KEY", help="the action key (or its start)")
        if name == "gc":
            a.add_argument("--max-size", metavar="SIZE", help="e.g. 20G: the most the blobs "
                           "still needed may take")
            a.add_argument("--max-age", metavar="AGE", help="e.g. 30d: remove entries no build "
                           "used for this long")
            a.add_argument("--keep", nargs="*", default=[], metavar="MANIFEST",
                           help="manifests (or folders of them, e.g. build/) whose tasks are kept")
        a.set_defaults(func=f"orchestrator.commands.cache:{name}")


_PYDANTIC_LOADER = "pydantic.plugin._loader"


def _no_pydantic_plugin_loader() -> None:
    """With its plugins disabled, pydantic's plugin loader answers "no plugins", but importing it
    still imports importlib.metadata (email parsing and all: ~13 ms of a ~200 ms no-op build).
    Stand in for it with a module whose get_plugins() gives the same answer; any other name
    asked of it loads the real module (so a pydantic that needs more from it still works)."""
    if os.environ.get("PYDANTIC_DISABLE_PLUGINS") not in ("__all__", "1", "true") \
            or _PYDANTIC_LOADER in sys.modules:
        return
    import types

    stub = types.ModuleType(_PYDANTIC_LOADER, "deploy-build: pydantic plugins disabled")

    def get_plugins() -> tuple[()]:
        return ()

    def real(name: str) -> Any:
        if name.startswith("__"):  # the import system asks for __path__ and such
            raise AttributeError(name)
        import importlib

        if sys.modules.get(_PYDANTIC_LOADER) is stub:
            del sys.modules[_PYDANTIC_LOADER]
        return getattr(importlib.import_module(_PYDANTIC_LOADER), name)

    stub.get_plugins = get_plugins  # type: ignore[attr-defined]
    stub.__getattr__ = real  # type: ignore[method-assign]
    sys.modules[_PYDANTIC_LOADER] = stub


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] not in COMMANDS and not args_list[0].startswith("-"):
        args_list.insert(0, "build")
    args = parser("build" if args_list[:1] == ["build"] else None).parse_args(args_list)
    if not getattr(args, "func", None):
        parser().print_help(sys.stderr)
        return 1
    from orchestrator.errors import (
        EXIT_INTERRUPTED,
        EXIT_TERMINATED,
        EXIT_USER_ERROR,
        FatalError,
        Terminated,
        raise_terminated,
    )

    # pydantic looks for its plugins among every installed distribution's entry points the first
    # time it builds a validator: a tenth of a no-op build, for plugins this tool never uses
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    _no_pydantic_plugin_loader()
    module, _, name = args.func.partition(":")
    import signal
    import threading

    # SIGTERM unwinds like Ctrl-C for the whole command, so every cleanup (`finally`) runs: a
    # probe file, a staging folder, a temp blob never outlives it
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, raise_terminated) if main_thread else None
    try:
        import importlib

        code: int = getattr(importlib.import_module(module), name)(args)
        return code
    except FatalError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as e:
        print("interrupted", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(e, Terminated) else EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `deploy-build r.yaml --dry-run | head`: the reader left
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_USER_ERROR
    except Exception as exc:
        return _crashed(exc, args_list)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _crashed(exc: Exception, args_list: list[str]) -> int:
    """An error the disk caused (a message, exit 1) or a bug (a crash log, exit 3)."""
    from orchestrator.errors import EXIT_BUG, EXIT_USER_ERROR
    from orchestrator.host.diskerrors import environment_error

    disk = environment_error(exc)
    if disk:  # a full, read-only or forbidden disk: say what and where, no crash log
        print(f"error: {disk}", file=sys.stderr)
        return EXIT_USER_ERROR
    import tempfile
    import traceback

    fd, path = tempfile.mkstemp(prefix="deploy-build-crash-", suffix=".log")
    with os.fdopen(fd, "w") as f:
        f.write(f"deploy-build {__version__}, python {sys.version}\nargs: {args_list}\n\n")
        traceback.print_exc(file=f)
    print(f"internal error: {type(exc).__name__}: {exc} (traceback in {path}); "
          "please report it", file=sys.stderr)
    return EXIT_BUG
