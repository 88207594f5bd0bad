"""Progress with an ETA on stderr."""

from __future__ import annotations

import io

from flowvae.progress import progress_bar


def test_bar_shows_count_and_eta() -> None:
    out = io.StringIO()
    with progress_bar(4, "eval iwae", file=out, interval=0) as bar:
        for _ in range(4):
            bar.update(1)
    text = out.getvalue()
    assert "eval iwae: 2/4 examples" in text and "ETA" in text and "4/4" in text


def test_short_jobs_write_nothing_into_a_log_and_disabled_bars_nothing_at_all() -> None:
    log = io.StringIO()  # not a terminal: the first line comes after 30 s
    with progress_bar(3, "sample", file=log) as bar:
        bar.update(3)
    assert log.getvalue() == ""
    off = io.StringIO()
    with progress_bar(3, "sample", enabled=False, file=off, interval=0) as bar:
        bar.update(3)
    assert off.getvalue() == ""
