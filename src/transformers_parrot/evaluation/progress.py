"""One progress bar per run, on rank 0: rows done across all ranks, questions/s and the ETA (tqdm).

Rank 0 counts the other ranks' rows from the prediction files they append to (one line per row), so the ranks never
synchronise for the bar.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

REFRESH_SECONDS = 0.5
"""At most this often the other ranks' files are read."""


def count_lines(path: Path) -> int:
    """Complete lines in ``path`` (0 when it does not exist yet)."""
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


class RunProgress:
    """``total`` rows, ``initial`` of them predicted before this run; ``other_files``: the other ranks' files."""

    def __init__(self, total: int, initial: int, desc: str, enabled: bool, other_files: Sequence[Path] = ()):
        self.own = 0
        self.initial = initial
        self.other_files = list(other_files)
        self._last_read = 0.0
        self._others = 0
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="q", dynamic_ncols=True)

    def advance(self, rows: int) -> None:
        """This rank finished ``rows`` more rows."""
        self.own += rows
        self.refresh()

    def refresh(self, force: bool = False) -> None:
        if self.bar is None:
            return
        now = time.monotonic()
        if self.other_files and (force or now - self._last_read >= REFRESH_SECONDS):
            self._others = sum(count_lines(p) for p in self.other_files)
            self._last_read = now
        done = min(self.initial + self.own + self._others, self.bar.total)
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.refresh(force=True)
            self.bar.close()
            self.bar = None


__all__ = ["REFRESH_SECONDS", "RunProgress", "count_lines"]
