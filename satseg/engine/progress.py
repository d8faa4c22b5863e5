"""Rich progress display for training: one bar over all batches with loss, Dice and ETA (stderr)."""

from __future__ import annotations

import os
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

__all__ = ["TrainProgress"]


class TrainProgress:
    """Context manager around a rich Progress; does nothing when ``enabled`` is False."""

    def __init__(self, epochs: int, batches_per_epoch: int, start_epoch: int = 0, enabled: bool = True) -> None:
        self.enabled = enabled
        self.epochs = epochs
        self.batches = batches_per_epoch
        self.loss: float | None = None
        self.dice = "–"
        self.epoch = start_epoch
        self._progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  dice {task.fields[dice]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR"))),
            disable=not enabled,
        )
        self._task = self._progress.add_task(
            "train",
            total=epochs * batches_per_epoch,
            completed=start_epoch * batches_per_epoch,
            epoch=f"{start_epoch + 1}/{epochs}",
            loss="–",
            dice="–",
        )

    def __enter__(self) -> TrainProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.__exit__(*exc)

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._progress.update(self._task, epoch=f"{epoch + 1}/{self.epochs}")

    def step(self, loss: float) -> None:
        self.loss = loss if self.loss is None else 0.9 * self.loss + 0.1 * loss
        self._progress.update(self._task, advance=1, loss=f"{self.loss:.4f}")

    def end_epoch(self, row: dict[str, Any]) -> None:
        if "dice_mean" in row:
            self.dice = f"{row['dice_mean']:.4f}"
        self._progress.update(self._task, dice=self.dice)
        if self.enabled:
            summary = f"epoch {row['epoch'] + 1}/{self.epochs}: loss {row['train_loss']:.4f}"
            if "dice_mean" in row:
                summary += f", val dice {row['dice_mean']:.4f}"
            self._progress.console.print(summary + f" ({row['seconds']:.1f} s)", highlight=False)
