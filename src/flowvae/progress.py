"""Progress with an ETA on stderr for the long commands (``eval``, ``sample``, ``gaps``).

One helper, :func:`progress_bar`, so that every command reports the same way. Library code
never prints: a long-running function takes ``progress: Callable[[int], None] | None`` and calls
it with the number of items it has just finished (see :func:`flowvae.estimators.evaluate`); the
CLI passes ``bar.update``. Hook for ``flowvae gaps``: give ``run_gaps`` such a callback (called
per example) and wrap the call in ``with progress_bar(n, "gaps", ...) as bar``.
"""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm

FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} [{elapsed} elapsed, ETA {remaining}{postfix}]"
OWN_ETA = "{desc}: {n_fmt}/{total_fmt} {unit} [{elapsed} elapsed{postfix}]"  # the ETA in the postfix


def progress_bar(
    total: int, desc: str, enabled: bool = True, unit: str = "examples", file: TextIO | None = None,
    interval: float | None = None, initial: int = 0, eta: bool = True,
) -> tqdm:  # fmt: skip
    """A bar on ``file`` (default stderr): ``desc: done/total unit [elapsed, ETA]``.

    On a terminal it redraws in place every 0.5 s and is cleared at the end; into a log file it
    first writes after 30 s, then a line at most every 30 s, and nothing for a shorter job (an
    error stays the only line). ``interval`` overrides both. Disabled, it prints nothing; stdout
    stays clean either way (``--json`` prints exactly one object there). ``initial``: items done
    before (a resumed run), not counted in the rate. ``eta=False``: no ETA of tqdm's (its rate
    knows nothing of a time budget); the caller writes its own in the postfix.
    """
    file = file or sys.stderr
    tty = hasattr(file, "isatty") and file.isatty()
    every = interval if interval is not None else (0.5 if tty else 30.0)
    return tqdm(
        total=total, initial=initial, desc=desc, unit=unit, file=file, disable=not enabled, leave=not tty,
        mininterval=every, delay=0 if tty else every, bar_format=FORMAT if eta else OWN_ETA,
        dynamic_ncols=tty, ascii=not tty,
    )  # fmt: skip
