"""Progress for long loops: a tqdm bar on a terminal, periodic log lines everywhere else.

tqdm with ``disable=None`` hides its bar when stderr is not a terminal (a log file, CI, ``nohup``),
which leaves a 20-minute evaluation silent. :class:`Progress` keeps the bar for terminals and,
where the bar is hidden, logs one INFO line at most every ``log_every_s`` seconds, and a last one
when the loop took that long (short loops stay quiet: selection runs many times in a benchmark).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

LOG_EVERY_S = 30.0


class Progress:
    """``for x in Progress(items, desc=...)`` or ``with Progress(total=n, desc=...) as p: p.update(k)``."""

    def __init__(self, iterable: Iterable | None = None, *, desc: str, total: int | None = None,
                 unit: str = "it", log_every_s: float = LOG_EVERY_S, **tqdm_kwargs: Any):
        self.iterable = iterable
        self.bar = tqdm(iterable, desc=desc, total=total, unit=unit, disable=None, **tqdm_kwargs)
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.desc, self.total, self.unit, self.log_every_s = desc, total, unit, log_every_s
        self.n = 0
        self._start = self._last_log = time.monotonic()
        self._logged = self._closed = False

    @property
    def logging(self) -> bool:
        """True where the bar is hidden and progress goes to the log instead."""
        return bool(self.bar.disable)

    def __iter__(self) -> Iterator:
        if not self.logging:
            yield from self.bar
            return
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def update(self, n: int = 1) -> None:
        if not self.logging:
            self.bar.update(n)
            return
        self.n += n
        now = time.monotonic()
        if now - self._last_log >= self.log_every_s:
            self._last_log, self._logged = now, True
            self._log(now)

    def _log(self, now: float) -> None:
        done = f"{self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f} %)" if self.total else f"{self.n} {self.unit}"
        logger.info("%s: %s after %.0f s", self.desc, done, now - self._start)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.bar.close()
        now = time.monotonic()
        if self.logging and (self._logged or now - self._start >= self.log_every_s):
            self._log(now)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
