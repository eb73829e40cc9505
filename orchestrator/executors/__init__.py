"""Executors run task specs and report small results; they never decide what to run."""
