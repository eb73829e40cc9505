"""Warm workers: a fork server that has imported what the build's steps import, so a task's worker
starts in milliseconds instead of paying for torch, transformers and onnx again.

Every task still runs in a process of its own (a crash, an ``os._exit`` or a limit kills that
task alone): the server forks one child per task, and the child, in a session of its own, with
the task's environment, log and working folder, runs what ``python -m orchestrator.run.worker
SPEC`` runs. What the fork saves is the start-up: the interpreter and the imports the server did
once (about 1 s of onnx per ONNX task, 4-6 s of torch and transformers per PyTorch task on a
2-core Xeon).

The server is started by the local executor when the first task of a build starts, with the
modules its step declares (``Step.preload``); a later task whose step names a module the server
lacks starts a new server with both, and the old one retires once its children have finished. A
task goes to the newest server that is ready, else it is started cold (``python -m
orchestrator.run.worker``), so nothing ever waits for a server. Only modules that start no thread at
import may be preloaded: forking a process with threads can deadlock the child. The server checks
its thread count after the imports and before each fork, and refuses (the task starts cold) when
it is not alone; ``onnxruntime``, ``openvino`` and TensorFlow start threads at import and are
never preloaded. ``DEPLOY_BUILD_WARM_WORKERS=0`` turns the server off.

A child's memory is its session's resident set less the server's at the fork (the preloaded
libraries it shares copy-on-write), so a task's ``max_memory_mb`` counts what the task adds.

Protocol: JSON lines. The executor writes requests to the server's stdin (``{"id", "spec",
"cwd", "log", "env"}``); the server answers on its stdout with ``{"ready", "rss_mb"}`` once its
imports are done (or ``{"unsafe": why}``, then exits), ``{"id", "pid"}`` (or ``{"id",
"refused"}``) per request and ``{"exit": pid, "rc"}`` when a child ends (``rc`` as Popen's
returncode: minus the signal that killed it).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OFF_ENV = "DEPLOY_BUILD_WARM_WORKERS"
# always imported by a server: what every worker imports before its step does
BASE = ("orchestrator.run.worker", "orchestrator.registry", "orchestrator.formats", "numpy", "pydantic")
# modules known to start a thread when imported: never preloaded (see the module docstring)
THREADED = ("onnxruntime", "openvino", "nncf", "tensorflow", "ai_edge_litert", "tensorrt", "ray")


def enabled() -> bool:
    return os.environ.get(OFF_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def preloadable(modules: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The modules a server may import ahead: sorted, without the ones that start threads."""
    return tuple(sorted({m for m in modules if m.split(".")[0] not in THREADED}))


# ---- the executor's side ----------------------------------------------------------------------

@dataclass
class ForkedProcess:
    """A task's process forked by a server: the part of ``subprocess.Popen`` the local executor
    uses (``pid``, ``poll``, ``wait``, ``returncode``)."""

    pid: int
    server: Server
    baseline_mb: float  # the server's resident set at the fork (shared copy-on-write)
    returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.server.read()
            self.returncode = self.server.exits.pop(self.pid, None)
            if self.returncode is None and self.server.dead():
                # its server was killed: the child's death signal ends it (and its group); make
                # sure, since nobody here can wait for it
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.returncode = -signal.SIGKILL
                self.server.children.discard(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"warm worker {self.pid}", timeout or 0.0)
            time.sleep(0.01)
        assert self.returncode is not None
        return self.returncode


@dataclass
class Server:
    """One fork server process and what it said."""

    proc: subprocess.Popen[bytes]
    modules: tuple[str, ...]
    ready: bool = False
    rss_mb: float = 0.0
    failed: str | None = None  # why it cannot fork (unsafe, died)
    exits: dict[int, int] = field(default_factory=dict)
    children: set[int] = field(default_factory=set)
    _buf: bytes = b""
    _replies: dict[int, dict[str, Any]] = field(default_factory=dict)
    _next: int = 0

    @classmethod
    def start(cls, modules: tuple[str, ...], env: dict[str, str]) -> Server:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.run.executors.warm", *modules],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env={**env, "DEPLOY_BUILD_PARENT_PID": str(os.getpid()), "OMP_NUM_THREADS": "1",
                 "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
            start_new_session=True)
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        return cls(proc, modules)

    def dead(self) -> bool:
        return self.proc.poll() is not None

    def usable(self) -> bool:
        self.read()
        return self.ready and self.failed is None and not self.dead()

    def read(self) -> None:
        """Take in what the server said so far (never blocks)."""
        assert self.proc.stdout is not None
        while True:
            try:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                if self.dead() and self.failed is None:
                    self.failed = "the warm worker server exited"
                break
            self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            if line.strip():
                self._said(json.loads(line))

    def _said(self, msg: dict[str, Any]) -> None:
        if "ready" in msg:
            self.ready, self.rss_mb = True, float(msg.get("rss_mb", 0.0))
        elif "unsafe" in msg:
            self.failed = str(msg["unsafe"])
        elif "exit" in msg:
            self.exits[int(msg["exit"])] = int(msg["rc"])
            self.children.discard(int(msg["exit"]))
        elif "id" in msg:
            self._replies[int(msg["id"])] = msg

    def fork(self, spec: Path, cwd: Path, log: Path, env: dict[str, str],
             wait_s: float = 5.0) -> ForkedProcess | None:
        """Fork a child running ``spec``; None when the server refuses or does not answer."""
        self._next += 1
        rid = self._next
        request = {"id": rid, "spec": str(spec), "cwd": str(cwd), "log": str(log), "env": env}
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError:
            self.failed = "the warm worker server is gone"
            return None
        deadline = time.monotonic() + wait_s
        while rid not in self._replies:
            if self.dead() or time.monotonic() >= deadline:
                self.failed = self.failed or "the warm worker server did not answer"
                return None
            select.select([self.proc.stdout.fileno()], [], [], 0.01)
            self.read()
        reply = self._replies.pop(rid)
        if "pid" not in reply:
            self.failed = str(reply.get("refused", "refused"))
            return None
        self.children.add(int(reply["pid"]))
        return ForkedProcess(int(reply["pid"]), self, self.rss_mb)

    def stop(self) -> None:
        """End the server (its children were stopped by the executor)."""
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(2)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@dataclass
class WarmPool:
    """The servers of one executor: the newest ready one forks new tasks; a task whose step
    preloads a module none has starts a server with it (at most one starting at a time)."""

    env: dict[str, str]
    servers: list[Server] = field(default_factory=list)
    broken: str | None = None  # why this build stopped starting servers

    def want(self, modules: tuple[str, ...]) -> None:
        """Make sure a server with these modules (and every module asked before) comes up."""
        if self.broken is not None:
            return  # a server could not fork safely (or died): this build starts tasks cold
        wanted = preloadable([*BASE, *modules])
        newest = self.servers[-1] if self.servers else None
        if newest is not None:
            newest.read()
            if newest.failed is not None:
                self.broken = newest.failed
                return
            if not newest.ready or set(wanted) <= set(newest.modules):
                return  # still starting (the next task asks again), or it has them
        union = preloadable([*wanted, *(newest.modules if newest else ())])
        self.servers.append(Server.start(union, self.env))

    def fork(self, spec: Path, cwd: Path, log: Path, env: dict[str, str]) -> ForkedProcess | None:
        for server in reversed(self.servers):
            if server.usable():
                return server.fork(spec, cwd, log, env)
        return None

    def tidy(self) -> None:
        """Stop servers that a newer ready one replaced and that have no child left."""
        newest = next((s for s in reversed(self.servers) if s.usable()), None)
        for s in list(self.servers):
            if s is not newest and (s.dead() or (s.usable() and not s.children)):
                s.stop()
                self.servers.remove(s)

    def close(self) -> None:
        for s in self.servers:
            s.stop()
        self.servers.clear()


# ---- the server's side ------------------------------------------------------------------------

def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:  # pragma: no cover - no /proc: cannot tell, do not fork
        return 2


def _rss_mb() -> float:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):  # pragma: no cover
        return 0.0


def _child(req: dict[str, Any], fds: tuple[int, ...]) -> None:
    """In the forked child: become the task's worker process, run it, exit with its code."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for fd in fds:  # the server's protocol and wake-up pipes
            os.close(fd)
        os.setsid()
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        os.environ["DEPLOY_BUILD_PARENT_PID"] = str(os.getppid())  # the server: it dies first
        if "torch" in sys.modules:  # torch read OMP_NUM_THREADS when the server imported it
            with contextlib.suppress(ValueError, RuntimeError):
                sys.modules["torch"].set_num_threads(int(req["env"].get("OMP_NUM_THREADS", "1")))
        from orchestrator.run import worker

        sys.argv = [worker.__file__, req["spec"]]
        code = worker.main([req["spec"]])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - the task fails with the traceback in its log
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def serve(modules: list[str]) -> int:
    """The server's loop: import, say ready, then fork a child per request until stdin closes."""
    from orchestrator.run.worker import die_with_parent

    if not die_with_parent():  # its children get SIGHUP when it dies, and kill their groups
        return 1
    out_fd = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)  # what an import prints must not reach the protocol

    def say(msg: dict[str, Any]) -> None:
        os.write(out_fd, json.dumps(msg).encode() + b"\n")

    for name in [*BASE, *modules]:
        with contextlib.suppress(Exception):
            importlib.import_module(name)
        if _threads() > 1:
            say({"unsafe": f"importing {name} started a thread: the server cannot fork safely"})
            return 0
    say({"ready": True, "rss_mb": round(_rss_mb(), 1)})
    # a child's end wakes the loop (no polling: the server sleeps beside a benchmark)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    buf, open_ = b"", True
    children: set[int] = set()
    while open_ or children:
        readable, _, _ = select.select([0, wake_r] if open_ else [wake_r], [], [], 1.0)
        if wake_r in readable:
            os.read(wake_r, 4096)
        if 0 in readable:
            chunk = os.read(0, 65536)
            open_ = bool(chunk)
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line.strip():
                    children.update(_fork(json.loads(line), (out_fd, wake_r, wake_w), say))
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                children.discard(pid)
                say({"exit": pid, "rc": -os.WTERMSIG(status) if os.WIFSIGNALED(status)
                     else os.WEXITSTATUS(status)})
    return 0


def _fork(req: dict[str, Any], fds: tuple[int, ...], say: Any) -> list[int]:
    if _threads() > 1:
        say({"id": req["id"], "refused": "the warm worker server has threads: not forking"})
        return []
    pid = os.fork()
    if pid == 0:
        _child(req, fds)  # never returns
    say({"id": req["id"], "pid": pid})
    return [pid]


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1:]))
