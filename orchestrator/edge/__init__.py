"""Edge formats (LiteRT). The conversion tools run in an environment of their own (litert_env)."""
