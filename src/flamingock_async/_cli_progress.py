"""A progress bar on the terminal for `flamingock run`, fed by the runner's events.

Rich is imported only when the first change starts, so a run with nothing pending never
loads it.
"""

from __future__ import annotations

from typing import IO, Any

from ._progress import EventKind, RunEvent, RunProgress

__all__ = ["TerminalProgress"]


class TerminalProgress:
    """Show one bar for the changes of a run on `stream`, which should be a terminal.

    Register `on_event` with `AsyncRunner.add_listener`; call `close()` when the run ends,
    whatever its outcome.
    """

    def __init__(self, progress: RunProgress, stream: IO[str]) -> None:
        self._progress = progress
        self._stream = stream
        self._bar: Any = None
        self._task: Any = None

    def on_event(self, event: RunEvent) -> None:
        if event.kind is EventKind.CHANGE_STARTED:
            self._start_bar()
            self._bar.update(self._task, description=f"applying {event.change_id}")
        elif event.kind is EventKind.CHANGE_APPLIED and self._bar is not None:
            self._bar.update(self._task, advance=1, description=f"applied {event.change_id}")
        elif event.kind is EventKind.LOCK_LOST and self._bar is not None:
            self._bar.update(self._task, description="lock lost")
        elif event.kind in (EventKind.RUN_COMPLETED, EventKind.RUN_FAILED):
            self.close()

    def _start_bar(self) -> None:
        if self._bar is not None:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        total = self._progress.applied + self._progress.pending
        self._bar = Progress(
            TextColumn("[bold]flamingock[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=Console(file=self._stream),
            transient=True,
        )
        self._task = self._bar.add_task("starting", total=total or None)
        self._bar.start()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
