"""orchestrator.machine: the one home of machine facts, for keys and the benchmark alike."""

from __future__ import annotations

import os

import pytest

from orchestrator import machine


def test_facts_by_name_and_an_unknown_one() -> None:
    assert machine.fact("cpu_count") == str(os.cpu_count())
    assert machine.fact("cpu_model") == machine.cpu_model() != ""
    with pytest.raises(KeyError, match="unknown machine fact 'gpu'; known: cpu_count, cpu_model"):
        machine.fact("gpu")


def test_the_benchmark_reports_the_fact_its_key_holds() -> None:
    from orchestrator.steps import benchmark

    assert benchmark.cpu_model is machine.cpu_model
