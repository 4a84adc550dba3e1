"""Progress lines with an ETA for long loops (corpus encodes), in the shape of training's lines.

Training says "step 40/120, loss 0.41, 1.2 s/step, eta 96 s" every `logging_steps` steps (every
few seconds on a CPU); an encode of a few thousand passages takes as long as a short training run,
so it says "encoding: 1024/2696 texts (38%), 41 texts/s, eta 41 s" at about the same rhythm (at
most one line per `every` seconds, and always the last one) through the same `say` callable.
"""

from __future__ import annotations

import time
from collections.abc import Callable

PROGRESS_SECONDS = 10.0


class ProgressLine:
    """Counts work done out of `total` and says a line with the rate and an ETA now and then.

    `total` may grow (`expect`) when the work is discovered piece by piece (shard after shard).
    `clock` is injectable so the cadence can be tested without waiting.
    """

    def __init__(self, say: Callable[[str], None], label: str, total: int = 0, unit: str = "texts",
                 every: float = PROGRESS_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.say = say
        self.label = label
        self.unit = unit
        self.total = total
        self.done = 0
        self.every = every
        self.clock = clock
        self._start = clock()
        self._last = self._start

    def expect(self, more: int) -> None:
        self.total += more

    def advance(self, count: int) -> None:
        """Record `count` more items done; says a line when `every` seconds passed or the work is complete."""
        self.done += count
        now = self.clock()
        if self.done >= self.total or now - self._last >= self.every:
            self._last = now
            self.say(self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max((self.clock() if now is None else now) - self._start, 1e-9)
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        text = f"{self.label}: {self.done}/{self.total} {self.unit}{share}"
        if self.done:
            rate = self.done / elapsed
            text += f", {rate:.0f} {self.unit}/s, eta {max(self.total - self.done, 0) / rate:.0f} s"
        return text
