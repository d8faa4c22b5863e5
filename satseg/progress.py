"""Rich progress displays on stderr (stdout stays for results and ``--json``).

* :class:`TrainProgress`: one bar over all training batches with loss, Dice and ETA.
* :class:`ItemProgress`: segmenting or evaluating a list of scans: one bar over the scans and one over the
  sliding windows of the current scan, each with its remaining time (a single large volume on a CPU
  shows its ETA, too).
"""

from __future__ import annotations

import os
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

__all__ = ["TrainProgress", "ItemProgress", "note"]


def note(text: str) -> None:
    """One line for the person at the terminal (stderr, so ``--json`` output on stdout stays clean)."""
    Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")), soft_wrap=True).print(text, highlight=False)


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

    def stop(self, reason: str) -> None:
        """End the bar where it is (no ETA left frozen on screen) and say why training stopped."""
        task = self._progress.tasks[0]
        self._progress.update(self._task, total=task.completed)
        if self.enabled:
            self._progress.console.print(reason, highlight=False)

    def end_epoch(self, row: dict[str, Any]) -> None:
        if "dice_mean" in row:
            self.dice = f"{row['dice_mean']:.4f}"
        self._progress.update(self._task, dice=self.dice)
        if self.enabled:
            summary = f"epoch {row['epoch'] + 1}/{self.epochs}: loss {row['train_loss']:.4f}"
            if "dice_mean" in row:
                summary += f", val dice {row['dice_mean']:.4f}"
            self._progress.console.print(summary + f" ({row['seconds']:.1f} s)", highlight=False)


class ItemProgress:
    """Progress over ``total`` items (scans, cases) and the windows of the current one; a no-op when disabled.

    Use as a context manager; call :meth:`item` as each item starts and pass :meth:`windows` as the
    ``progress(done, total)`` callback of :func:`satseg.inference.sliding_window.sliding_window_inference`.
    """

    def __init__(self, total: int, verb: str, enabled: bool = True) -> None:
        self.enabled = enabled
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("remaining"),
            TimeRemainingColumn(),
            console=Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR"))),
            disable=not enabled,
        )
        self._items = self._progress.add_task(verb, total=total)
        self._windows = self._progress.add_task("  windows", total=None, visible=False)
        self._started = False

    def __enter__(self) -> ItemProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._started and exc[0] is None:
            self._progress.update(self._items, advance=1)
        self._progress.__exit__(*exc)

    def item(self, name: str) -> None:
        """An item starts (the previous one, if any, is done)."""
        if self._started:
            self._progress.update(self._items, advance=1)
        self._started = True
        self._progress.reset(self._windows, total=None, visible=True, description=f"  {name}")

    def windows(self, done: int, total: int) -> None:
        """``done`` of ``total`` sliding windows of the current item are predicted."""
        self._progress.update(self._windows, completed=done, total=total)
