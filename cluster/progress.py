"""Progress bars with an ETA for long loops, on a terminal only.

Under `ray job submit` (or any pipe) output goes to a log, where a redrawn bar is noise: there the
loops' own per-step log lines carry the progress and this does nothing.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator


@contextmanager
def progress_bar(description: str, total: int, completed: int = 0) -> Iterator[Callable[[], None]]:
    """Yields `advance()`; a rich bar (steps done / total, elapsed, ETA) when stdout is a terminal."""
    if not sys.stdout.isatty():
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn()) as bar:
        task = bar.add_task(description, total=total, completed=completed)
        yield lambda: bar.advance(task)
