"""deploy-build: compile YAML deployment recipes into cached, verified, benchmarked engines."""

__version__ = "0.1.0"
