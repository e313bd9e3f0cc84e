"""Progress of long commands: a tqdm bar on a terminal (or when asked), plain lines otherwise."""

from __future__ import annotations

import sys
from typing import Any, TextIO


class Progress:
    """Counts work done; draws a bar on stderr, or writes one line per step to ``lines``."""

    def __init__(self, total: int | None, *, wanted: bool = False, lines: Any = None, unit: str = 'rows',
                 stream: TextIO | None = None) -> None:
        self.done = 0
        self.unit = unit
        self.lines = lines
        self.bar: Any = progress_bar(total, wanted, stream, unit)

    def update(self, count: int, what: str = 'done') -> None:
        """Add ``count`` to the work done; without a bar, write a line saying so."""
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
        elif self.lines is not None:
            self.lines.write(f'{self.done} {self.unit} {what}')

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def progress_bar(total: int | None, wanted: bool, stream: TextIO | None = None, unit: str = 'rows') -> Any:
    """A tqdm bar on ``stream`` (stderr) when ``wanted`` or stdout is a terminal, else None."""
    if not (wanted or sys.stdout.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, file=stream or sys.stderr)
