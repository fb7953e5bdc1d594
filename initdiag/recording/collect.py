"""Where the recorder's rows go: streams on the device, copied to the host when full, turned into the frame.

The hooks write one row per recorded tensor into a :class:`~initdiag.recording.streams.Stream`; a
:class:`Collector` owns every stream of a recorder, copies their rows to the host in one transfer when a
buffer fills (never one sync per hook call), derives the statistics many steps at a time with numpy
(:func:`~initdiag.recording.rows.moment_chunk`) and builds the tidy frame.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from ..series import FRAME_COLUMNS, empty_frame
from ..vocab import Phase
from .rows import LayerState, Meta, moment_chunk
from .sink import ParquetSink
from .staging import Staging
from .streams import Stream

__all__ = ["HOST_ROWS_BYTES", "Collector"]

HOST_ROWS_BYTES = 32 << 20
"""Moment rows kept on the host before they are turned into statistics (the seed CNN: ~2,000 steps)."""


class Collector:
    """Every stream of one recorder, and the statistics derived from their rows so far, named from ``layers``
    (the recorder's list, which grows) and ``labels`` (run, initializer, seed): held in memory, or with a
    ``sink`` written to it as they are derived (:mod:`.sink`)."""

    def __init__(self, flush_every: int, layers: list[LayerState], labels: tuple[str, str, int],
                 sink: ParquetSink | None = None) -> None:
        self.flush_every = flush_every
        self.sink, self._layers, self._labels = sink, layers, labels
        self.streams: list[tuple[LayerState, str, Stream]] = []
        self._host: dict[int, list[tuple[np.ndarray, Meta]]] = {}
        self._host_bytes = 0
        self._chunks: list[dict[str, np.ndarray]] = []
        self._frame: pd.DataFrame | None = None
        self.staging = Staging()
        """The torch path's rows waiting for one batched pass: run before the rows are taken, told when a
        buffer grows."""

    def stream(self, layer: LayerState, kind: str, channels: int, y: torch.Tensor) -> Stream:
        """The layer's stream of ``kind`` with room for a row (taken to the host first when full), made on the
        device of ``y``, the tensor to be reduced into it, when new."""
        stream = layer.streams.get((kind, channels))
        if stream is not None and stream.n < stream.rows:  # the common case first: a row free
            return stream
        if stream is None:
            stream = layer.streams[(kind, channels)] = Stream(2 * channels + 2, y.device, self.flush_every)
            self.streams.append((layer, kind, stream))
        elif stream.full:
            self.flush()
        elif stream.n >= stream.rows:
            old = stream.buffer
            stream.room()
            self.staging.moved(old, stream.buffer)
        return stream

    def flush(self) -> None:
        """Copy the buffered rows to the host (one device-to-host copy in all) and empty the buffers.

        The statistics are derived later, many flushes at once (:meth:`frame`, or once the rows on the host
        pass :data:`HOST_ROWS_BYTES`): numpy costs a few microseconds per call whatever the number of rows."""
        self.staging.run()
        taken = [(index, *stream.take()) for index, (_, _, stream) in enumerate(self.streams) if stream.n]
        if not taken:
            return
        raw = [rows for _, rows, _ in taken]
        if all(r.device.type == "cpu" for r in raw):
            host = [r.numpy().copy() for r in raw]
        else:
            flat = torch.cat([r.reshape(-1) for r in raw]).cpu().numpy()
            parts = np.split(flat, np.cumsum([r.numel() for r in raw])[:-1])
            host = [h.reshape(r.shape) for h, r in zip(parts, raw, strict=True)]
        for (index, _, meta), rows in zip(taken, host, strict=True):
            self._host.setdefault(index, []).append((rows, meta))
            self._host_bytes += rows.nbytes
        self._frame = None
        if self._host_bytes > HOST_ROWS_BYTES:
            self._derive()

    def settle(self) -> None:
        """:meth:`flush`, and with a sink write every row derived so far (the end of a recording)."""
        self.flush()
        if self.sink is not None:
            self._derive()

    def _derive(self) -> None:
        host, self._host, self._host_bytes = self._host, {}, 0
        chunks = []
        for index, parts in sorted(host.items()):
            layer, kind, _ = self.streams[index]
            rows = np.concatenate([r for r, _ in parts]) if len(parts) > 1 else parts[0][0]
            meta = [m for _, ms in parts for m in ms]
            with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
                chunks.append(moment_chunk(layer, kind, rows, meta))
        if self.sink is not None and chunks:
            self.sink.write(_table(chunks, self._layers, *self._labels))
        else:
            self._chunks.extend(chunks)

    def prune(self, keep: Callable[[np.ndarray], np.ndarray]) -> None:
        """Drop the training rows whose step ``keep(steps)`` marks False (probe rows stay): every row so far is
        taken to the host and derived first."""
        self.flush()
        self._derive()
        pruned = []
        for chunk in self._chunks:
            mask = keep(chunk["step"]) | (chunk["phase"] != Phase.TRAIN)
            pruned.append(chunk if mask.all() else {k: v[mask] for k, v in chunk.items()})
        self._chunks = [c for c in pruned if len(c["step"])]
        self._frame = None

    def nbytes(self) -> int:
        """Bytes of the rows held on the host (derived and not yet derived)."""
        return self._host_bytes + sum(v.nbytes for c in self._chunks for v in c.values())

    def frame(self, max_steps: int | None = None) -> pd.DataFrame:
        """All statistics so far, one row each, with the columns of :data:`~initdiag.series.FRAME_COLUMNS`;
        with a sink, read back from it (thinned to ``max_steps`` training steps)."""
        self.flush()
        if self._frame is not None:
            return self._frame
        self._derive()
        if self.sink is not None:
            self._frame = self.sink.read([lay.name for lay in self._layers], max_steps)
        else:
            self._frame = _table(self._chunks, self._layers, *self._labels) if self._chunks else empty_frame()
        return self._frame


def _table(chunks: list[dict[str, np.ndarray]], layers: list[LayerState], run: str, initializer: str,
           seed: int) -> pd.DataFrame:
    """The tidy frame of derived chunks (:func:`~.rows.moment_chunk`), layers named from ``layers`` by code."""
    cols = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    codes = cols.pop("layer")
    names = np.array([lay.name for lay in layers], dtype=object)
    n = len(codes)
    data = {
        "run": pd.Categorical([run] * n),
        "initializer": pd.Categorical([initializer] * n),
        "seed": np.full(n, seed, dtype=np.int64),
        "epoch": cols["epoch"],
        "step": cols["step"],
        "phase": pd.Categorical(cols["phase"]),
        "layer": pd.Categorical(names[codes], categories=list(dict.fromkeys(names))),
        "depth": np.array([lay.depth for lay in layers], dtype=np.int64)[codes],
        "module": pd.Categorical(np.array([lay.module for lay in layers], dtype=object)[codes]),
        "kind": pd.Categorical(cols["kind"]),
        "stat": pd.Categorical(cols["stat"]),
        "value": cols["value"],
    }
    return pd.DataFrame(data, columns=list(FRAME_COLUMNS))
