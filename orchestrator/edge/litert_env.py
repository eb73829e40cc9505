"""The LiteRT environment: where litert-convert and litert-quantize run their jobs.

litert-torch and ai-edge-quantizer pin pydantic 2.11.10 and typing_extensions 4.12.2 (docs/toolchain.md),
which the project's environment does not take. So, as pre-commit gives each hook an environment,
they live in a virtualenv of their own that *layers* on the project's (a .pth file appends the
project's site-packages: torch and transformers are shared, its own pydantic shadows the
project's). ``make litert-env`` creates it as ``.venv-litert`` beside ``.venv``;
``DEPLOY_BUILD_LITERT_PYTHON`` names another interpreter. The jobs (litert_job.py) import nothing
from orchestrator. The ai-edge-litert interpreter (parity, benchmark) installs cleanly in the
project's environment (the ``edge`` extra).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

ENV_VAR = "DEPLOY_BUILD_LITERT_PYTHON"
# the distributions of the environment whose versions enter the key of a LiteRT job
PACKAGES = ("litert-torch", "litert-converter", "ai-edge-quantizer", "ai-edge-litert", "jax",
            "pydantic")
SETUP = ("`make litert-env` (a .venv-litert beside .venv), or set DEPLOY_BUILD_LITERT_PYTHON to "
         "a python that has litert-torch and ai-edge-quantizer")


def python() -> Path:
    """The LiteRT environment's interpreter (it may not exist)."""
    given = os.environ.get(ENV_VAR)
    if given:
        return Path(given)
    return Path(sys.prefix + "-litert") / "bin" / "python"


def problem(step: str) -> str | None:
    """Why a LiteRT job cannot run here (None: it can)."""
    exe = python()
    if not os.access(exe, os.X_OK):
        return f"{step} runs in the LiteRT environment, not found at {exe}: {SETUP}"
    found = versions()
    missing = [p for p in ("litert-torch", "ai-edge-quantizer") if p not in found]
    if missing:
        return f"{step}: the LiteRT environment {exe} lacks {', '.join(missing)}: {SETUP}"
    return None


_DIST = re.compile(r"^(?P<name>[A-Za-z0-9_.]+)-(?P<version>[^-]+)\.dist-info$")


@cache
def versions() -> dict[str, str]:
    """Versions of PACKAGES in the environment's own site-packages, read from the dist-info
    folder names (no interpreter is started)."""
    root = python().parent.parent
    out: dict[str, str] = {}
    for site in sorted(root.glob("lib/python*/site-packages")):
        for entry in os.listdir(site):
            m = _DIST.match(entry)
            if m:
                name = m.group("name").lower().replace("_", "-").replace(".", "-")
                if name in PACKAGES:
                    out.setdefault(name, m.group("version"))
    return dict(sorted(out.items()))


def fingerprint() -> str:
    """What enters a LiteRT job's key: the environment's package versions."""
    found = versions()
    return ",".join(f"{k}=={found[k]}" for k in PACKAGES if k in found) or "none"


JOB = Path(__file__).with_name("litert_job.py")
RESULT = "LITERT-RESULT "


def run_job(spec: dict[str, object], log: Callable[[str], None], threads: int) -> dict[str, Any]:
    """Run one job of litert_job.py in the LiteRT environment; its output goes to the task's log
    and its metrics come back. A failed job raises with the tail of its output."""
    import json
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)  # the job imports nothing from orchestrator
    done = subprocess.run([str(python()), str(JOB), json.dumps(spec, sort_keys=True)],
                          capture_output=True, text=True, env=env, check=False)
    lines = (done.stdout + done.stderr).splitlines()
    for line in lines:
        if not line.startswith(RESULT):
            log(line)
    result = [json.loads(x[len(RESULT):]) for x in done.stdout.splitlines() if x.startswith(RESULT)]
    if done.returncode != 0 or not result:
        tail = "\n".join(lines[-15:])
        raise RuntimeError(f"the LiteRT {spec['job']} job failed in {python()} (exit "
                           f"{done.returncode}):\n{tail}")
    return dict(result[-1])
