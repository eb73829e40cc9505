"""Gates that say which machines they are for.

A speed figure is a fact about one CPU: an int8 engine is 5x faster than PyTorch on a CPU with
AVX-512 VNNI and 1.7x on one with AVX2 only. A gate threshold may therefore carry a condition on
the machine class, in the CPU feature names `deploy-build doctor` prints:

    min_speedup: 1.0                                          # everywhere
    min_speedup: {value: 4, when: {cpu_features: [avx512_vnni]}}  # only where the CPU has VNNI
    min_speedup:                                              # a floor anywhere, a goal on VNNI
      - 1.0
      - {value: 4, when: {cpu_features: [avx512_vnni]}}

A condition is judged against the features recorded with the figure (the machine that measured
it), never against the machine that reads the manifest. Where it does not hold, the figure is
recorded and the gate says `not judged here: this machine lacks avx512_vnni`. Gates are never in a
task's key: editing one re-judges the recorded figures without measuring again.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

# CPU features that decide int8/bf16/fp16 speed, as /proc/cpuinfo spells them (x86 ``flags``, Arm
# ``Features``). A benchmark records which of these its machine has; a condition may name them.
ISA_FEATURES = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "amx_fp16",
    "asimd", "asimddp", "asimdhp", "i8mm", "bf16", "sve", "sve2",
)


def isa_features(flags: frozenset[str] | set[str]) -> list[str]:
    """The ISA features of ISA_FEATURES among a CPU's flags, in that order."""
    return [f for f in ISA_FEATURES if f in flags]


class OnMachine(BaseModel):
    """Which machines a gate is for: every listed CPU feature must be present."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    cpu_features: list[str] = Field(
        min_length=1, description="CPU features the machine must have, as `deploy-build doctor` "
        f"lists them ({', '.join(ISA_FEATURES)}).")

    @field_validator("cpu_features")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        for name in names:
            if name not in ISA_FEATURES:
                import difflib

                close = difflib.get_close_matches(name, ISA_FEATURES, n=1, cutoff=0.6)
                hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(ISA_FEATURES)}"
                raise ValueError(f"unknown CPU feature {name!r}; {hint}")
        return names

    def unmet(self, features: list[str] | set[str] | frozenset[str]) -> list[str]:
        """The required features a machine with ``features`` lacks (empty: the gate applies)."""
        return [f for f in self.cpu_features if f not in features]

    def describe(self) -> str:
        return "when the CPU has " + " + ".join(self.cpu_features)


class Conditional(BaseModel):
    """A gate threshold for some machines only."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    value: float = Field(gt=0, description="The threshold.")
    when: OnMachine | None = Field(None, description="The machines it is for (default: every "
                                   "one). Not `on:`: YAML reads an unquoted on as true.")


Threshold = Annotated[float, Field(gt=0)] | Conditional
GateValue = Threshold | Annotated[list[Threshold], Field(min_length=1)]


def thresholds(value: Any) -> list[Conditional]:
    """A gate's value as a list of thresholds, each with its condition (None: everywhere)."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    return [v if isinstance(v, Conditional) else Conditional(value=float(v)) for v in items]


def not_here(t: Conditional, features: list[str] | set[str] | frozenset[str] | None) -> str | None:
    """Why a threshold is not judged on the machine that measured (None: it is judged)."""
    if t.when is None:
        return None
    if features is None:
        return "not judged here: the figure was recorded without its CPU features"
    missing = t.when.unmet(features)
    if missing:
        return f"not judged here: this machine lacks {', '.join(missing)}"
    return None


def describe(t: Conditional) -> str:
    return f"{t.value:g}" + (f" ({t.when.describe()})" if t.when else "")
