"""Training, inference and analysis engines."""

__all__: list[str] = []
