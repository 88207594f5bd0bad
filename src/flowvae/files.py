"""Writing files: a failed write names the file it failed on.

``f.write`` on a full disk raises ``OSError(ENOSPC)`` without a file name, pillow and
TensorBoard's writer pass such errors on as they are, and ``torch.save`` reports a failed write
as a ``RuntimeError`` (``[enforce fail at inline_container.cc] unexpected pos``), the file's own
error only as its context. Every write of a run file goes through :func:`writing`, so each of
these is an ``OSError`` naming the file: the one error the command line reports in one line
(``PATH: No space left on device``, exit 1).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def writing(path: str | Path, torch_save: bool = False) -> Iterator[None]:
    """Re-raise an ``OSError`` inside the block as one naming ``path`` (errno and reason kept);
    ``torch_save``: also torch's ``RuntimeError`` for a failed write (the block is a torch.save)."""
    try:
        yield
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None
    except RuntimeError as e:
        if not torch_save:
            raise
        if isinstance(e.__context__, OSError):  # the file's own write error, e.g. ENOSPC
            raise OSError(e.__context__.errno, e.__context__.strerror, str(path)) from None
        reason = f"cannot write it (the disk may be full; torch.save: {(str(e).splitlines() or ['?'])[0]})"
        raise OSError(errno.EIO, reason, str(path)) from None


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temp path next to ``path`` (same suffix: writers that infer the format from it work) for
    the block to write; it then replaces ``path`` by a rename, so ``path`` is whole or as before.
    A failed block removes the temp file; its ``OSError`` names ``path`` (:func:`writing`)."""
    path = Path(path)
    tmp = path.with_name(f".{secrets.token_hex(4)}.{path.name}")
    with writing(path):
        try:
            yield tmp
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
