"""Training, inference, evaluation and export: the jobs the CLI runs."""
