"""The one progress bar of long jobs: count, rate and ETA, on stderr so stdout stays data."""

from __future__ import annotations


def progress_bar(*, label: str, unit: str, total: int, enabled: bool = True,
                 rate_unit: str | None = None):
    """A rich ``Progress`` and its task: ``label [bar] done/total unit  rate  elapsed  ETA``."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn,
                               TextColumn, TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    per_second = f"{rate_unit or unit}/s"

    class RateColumn(ProgressColumn):
        def render(self, task):
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.0f} {per_second}" if speed else f"-- {per_second}",
                        style="cyan")

    progress = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn(unit), RateColumn(), TimeElapsedColumn(), TextColumn("ETA"),
                        TimeRemainingColumn(), disable=not enabled, console=Console(stderr=True))
    return progress, progress.add_task(label, total=total)
