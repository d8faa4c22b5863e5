"""Training, inference, evaluation and export: the jobs the CLI runs (import from the modules)."""

__all__: list[str] = []
