"""A byte progress bar for the terminal: bytes done, rate and time left, on stderr."""

from __future__ import annotations

import threading
import time
from typing import TextIO

from .units import format_size


class ByteProgress:
    """Thread-safe; redraws at most ten times a second and only on a terminal the caller chose."""

    def __init__(self, total: int, stream: TextIO, label: str = "uploading") -> None:
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream
        self.label = label
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._lock = threading.Lock()

    def update(self, delta: int) -> None:
        with self._lock:
            self.done = max(0, self.done + delta)
            now = time.monotonic()
            if now - self._last_draw >= 0.1 or self.done >= self.total:
                self._last_draw = now
                self._draw(now)

    def close(self) -> None:
        with self._lock:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, now: float) -> None:
        elapsed = max(now - self._start, 1e-6)
        rate = self.done / elapsed
        fraction = min(self.done / self.total, 1.0)
        left = (self.total - self.done) / rate if rate > 0 else None
        eta = "--:--" if left is None else f"{int(left) // 60:02d}:{int(left) % 60:02d}"
        bar = "#" * int(fraction * 24)
        self.stream.write(
            f"\r{self.label} [{bar:<24}] {format_size(self.done)} / {format_size(self.total)}"
            f"  {format_size(int(rate))}/s  {eta} left "
        )
        self.stream.flush()


class StatusLine:
    """One line of progress rewritten in place (pages listed, files deleted), at most ten times a second."""

    def __init__(self, stream: TextIO, label: str) -> None:
        self.stream = stream
        self.label = label
        self._last = 0.0
        self._shown = False
        self._lock = threading.Lock()

    def update(self, phase: str, done: int, total: int) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last < 0.1 and done != total:
                return
            self._last = now
            count = f"{done:,}/{total:,}" if total else f"{done:,} files"
            self.stream.write(f"\r{self.label}: {phase} {count} ")
            self.stream.flush()
            self._shown = True

    def close(self) -> None:
        with self._lock:
            if self._shown:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
