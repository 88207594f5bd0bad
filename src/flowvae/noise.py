"""Random draws that belong to examples: what makes an estimate independent of batching.

Every random draw of model and estimator code goes through :func:`randn` / :func:`rand` (or
:func:`randn_rows`), naming which dimension indexes the batch's examples. Outside
:func:`example_streams` they are plain ``torch.randn`` / ``torch.rand`` (training: unchanged).
Inside, example ``b`` of the batch draws from its own streams (a normal and a uniform one),
keyed by :func:`stream_key` on the evaluation's seed, the example's index in its split and the
stream's kind, so an example's estimate depends only on (seed, index, model, settings): not on
the batch size, on which examples share its batch (``--limit``), on the number of processes, on
how samples are chunked, or on the device (the streams are float64 CPU generators; draws are cast
and moved). The generators are Philox4x64 (Salmon et al. 2011, counter-based) with the 128-bit
key (seed, index · KINDS + kind): distinct for every (seed, example, kind), where a 32-bit
seeded generator (torch's CPU Mersenne Twister) puts colliding pairs among ten thousand examples
for about 1 % of seeds.

Each example's stream is consumed in a fixed order (sample-major rows, as every caller draws
them) and hands out the same sequence however it is split, so a draw in blocks of rows gives
the same numbers as one draw of all rows.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Sequence
from contextvars import ContextVar

import numpy as np
import torch
from torch import Tensor

KINDS = 256  # stream kinds per example: a normal and a uniform one per purpose
MAX_INDEX = 2**56  # example indices a key holds next to its kind


def stream_key(seed: int, index: int, kind: int = 0) -> tuple[int, int]:
    """The 128-bit Philox key of stream ``kind`` of example ``index`` under evaluation seed
    ``seed``: one-to-one for seeds in [-2^63, 2^64), indices in [0, 2^56) and kinds in [0, 256)."""
    seed, index, kind = int(seed), int(index), int(kind)
    if not -(2**63) <= seed < 2**64:
        raise ValueError(f"seed {seed} is outside [-2^63, 2^64)")
    if not 0 <= index < MAX_INDEX or not 0 <= kind < KINDS:
        raise ValueError(f"example {index}, stream kind {kind}: outside [0, 2^56) x [0, {KINDS})")
    return seed % 2**64, index * KINDS + kind


QUANTUM = 4096  # values a stream draws from its generator at a time


class _Stream:
    """A sequence of float64 draws (normal or uniform) that is the same however it is taken:
    the generator is always asked for QUANTUM values at a time, and takes are served from that
    buffer in order."""

    def __init__(self, key: tuple[int, int], normal: bool):
        generator = np.random.Generator(np.random.Philox(key=np.array(key, dtype=np.uint64)))
        self.sampler = generator.standard_normal if normal else generator.random
        self.buffer = torch.empty(0, dtype=torch.float64)

    def take(self, n: int) -> Tensor:
        if n > len(self.buffer):
            blocks = -(-(n - len(self.buffer)) // QUANTUM)
            fresh = torch.from_numpy(self.sampler(blocks * QUANTUM))
            self.buffer = torch.cat([self.buffer, fresh])
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out


class ExampleStreams:
    """A normal and a uniform stream for each example of a batch (position ``b`` -> streams ``b``)."""

    def __init__(self, normal: Sequence[_Stream], uniform: Sequence[_Stream]):
        self.streams = {torch.randn: list(normal), torch.rand: list(uniform)}

    @classmethod
    def seeded(cls, seed: int, indices: Iterable[int], purpose: int = 0) -> ExampleStreams:
        """Each example's streams under ``seed`` for ``purpose`` (0: estimates; other numbers:
        draws that must be independent of those, e.g. a local optimisation's): kinds
        2 · purpose (normal) and 2 · purpose + 1 (uniform)."""
        indices = [int(i) for i in indices]
        return cls(
            [_Stream(stream_key(seed, i, 2 * purpose), True) for i in indices],
            [_Stream(stream_key(seed, i, 2 * purpose + 1), False) for i in indices],
        )

    def __len__(self) -> int:
        return len(self.streams[torch.randn])

    def narrow(self, start: int, length: int) -> ExampleStreams:
        """The streams of examples ``start .. start + length - 1`` (shared, not copied)."""
        end = start + length
        return ExampleStreams(self.streams[torch.randn][start:end], self.streams[torch.rand][start:end])

    def draw(self, sampler, shape: Sequence[int], batch_dim: int, dtype, device) -> Tensor:
        shape = tuple(shape)
        if not -len(shape) <= batch_dim < len(shape):
            raise ValueError(f"a draw of shape {shape} has no dim {batch_dim} indexing examples")
        batch_dim %= len(shape)
        streams = self.streams[sampler]
        if shape[batch_dim] != len(streams):
            raise ValueError(
                f"a draw of shape {shape} has {shape[batch_dim]} examples in dim {batch_dim}, "
                f"but the streams are for {len(streams)}"
            )
        # per example, its values in row-major order of the other dims (sample-major rows)
        rest = shape[:batch_dim] + shape[batch_dim + 1 :]
        n = math.prod(rest)
        parts = [s.take(n).view(rest) for s in streams]
        return torch.stack(parts, dim=batch_dim).to(device=device, dtype=dtype)

    def draw_rows(self, examples: Tensor, width: int, dtype, device) -> Tensor:
        """Normal draws (R, width) for rows whose example positions are ``examples`` (R,): each
        example's rows, in row order, take the next draws of its stream."""
        examples = examples.cpu()
        out = torch.empty(len(examples), width, dtype=torch.float64)
        order = torch.argsort(examples, stable=True)
        counts = torch.bincount(examples, minlength=len(self)).tolist()
        start = 0
        for stream, count in zip(self.streams[torch.randn], counts, strict=False):
            if count:
                out[order[start : start + count]] = stream.take(count * width).view(count, width)
                start += count
        return out.to(device=device, dtype=dtype)


_ACTIVE: ContextVar[ExampleStreams | None] = ContextVar("flowvae_example_streams", default=None)


@contextlib.contextmanager
def example_streams(streams: ExampleStreams | None) -> Iterator[ExampleStreams | None]:
    """Make ``streams`` the source of every :func:`randn`/:func:`rand` inside the block
    (``None``: plain global-RNG draws)."""
    token = _ACTIVE.set(streams)
    try:
        yield streams
    finally:
        _ACTIVE.reset(token)


@contextlib.contextmanager
def narrowed(start: int, length: int) -> Iterator[None]:
    """Inside, draws belong to examples ``start .. start + length - 1`` of the active streams
    (for code that splits its batch into chunks); a no-op without streams."""
    active = _ACTIVE.get()
    with example_streams(None if active is None else active.narrow(start, length)):
        yield


def active() -> ExampleStreams | None:
    return _ACTIVE.get()


def randn(shape: Sequence[int], *, batch_dim: int, dtype=None, device=None) -> Tensor:
    """Standard-normal draws of ``shape`` whose dim ``batch_dim`` indexes the batch's examples."""
    streams = _ACTIVE.get()
    if streams is None:
        return torch.randn(tuple(shape), dtype=dtype, device=device)
    return streams.draw(torch.randn, shape, batch_dim, dtype or torch.get_default_dtype(), device)


def rand(shape: Sequence[int], *, batch_dim: int, dtype=None, device=None) -> Tensor:
    """Uniform [0, 1) draws of ``shape`` whose dim ``batch_dim`` indexes the batch's examples."""
    streams = _ACTIVE.get()
    if streams is None:
        return torch.rand(tuple(shape), dtype=dtype, device=device)
    return streams.draw(torch.rand, shape, batch_dim, dtype or torch.get_default_dtype(), device)


def randn_rows(examples: Tensor, width: int, *, dtype=None, device=None) -> Tensor:
    """Standard-normal rows (R, width); row r belongs to example ``examples[r]`` of the batch."""
    streams = _ACTIVE.get()
    if streams is None:
        return torch.randn(len(examples), width, dtype=dtype, device=device)
    return streams.draw_rows(examples, width, dtype or torch.get_default_dtype(), device)


__all__ = [
    "KINDS", "ExampleStreams", "active", "example_streams", "narrowed", "rand", "randn", "randn_rows",
    "stream_key",
]  # fmt: skip
