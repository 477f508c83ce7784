"""Progress: where tqdm's bar is hidden (output is not a terminal), progress reaches the log."""

from __future__ import annotations

import io
import logging

from ifguide.progress import Progress


def _lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "ifguide.progress"]


def test_iterating_logs_counts_and_yields_every_item(caplog):
    caplog.set_level(logging.INFO, logger="ifguide.progress")
    bar = Progress(range(4), desc="generate", unit="batch", log_every_s=0.0, file=io.StringIO())
    assert bar.logging  # not a terminal, so tqdm hides its bar
    assert list(bar) == [0, 1, 2, 3]
    lines = _lines(caplog)
    assert lines[:4] == [f"generate: {k}/4 batch ({100 * k / 4:.0f} %) after 0 s" for k in range(1, 5)]
    assert lines[-1].startswith("generate: 4/4 batch (100 %)")  # the closing line


def test_manual_updates_without_total_log_the_running_count(caplog):
    caplog.set_level(logging.INFO, logger="ifguide.progress")
    with Progress(desc="prepare", unit="tok", log_every_s=0.0, file=io.StringIO()) as bar:
        bar.update(100)
        bar.update(23)
    assert _lines(caplog)[:2] == ["prepare: 100 tok after 0 s", "prepare: 123 tok after 0 s"]


def test_short_loops_stay_quiet(caplog):
    caplog.set_level(logging.INFO, logger="ifguide.progress")
    with Progress(total=3, desc="rank documents", unit="row", file=io.StringIO()) as bar:
        bar.update(3)
    assert list(Progress([1, 2], desc="perplexity", file=io.StringIO())) == [1, 2]
    assert _lines(caplog) == []
