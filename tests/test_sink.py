"""A series streamed to Parquet as it is recorded: every step on disk in parts, memory bounded by the rows not
yet written, the same frame read back as a bounded recording keeps, and what a failed run wrote kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from initdiag import Recorder
from initdiag.recording import collect
from initdiag.recording.sink import ParquetSink, read_series

pytest.importorskip("pyarrow")


def _loop(steps: int, max_steps: int | None, stream_to: Path | None = None, fail_at: int | None = None) -> Recorder:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    with Recorder(model, every=1, max_steps=max_steps, flush_every=16, stream_to=stream_to) as rec:
        for step in range(steps):
            if step == fail_at:
                raise RuntimeError("the loop failed")
            x, y = torch.randn(16, 8, generator=gen), torch.randint(0, 4, (16,), generator=gen)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return rec


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["step", "layer", "kind", "stat"], kind="stable").reset_index(drop=True)


def test_a_streamed_recording_reads_back_as_the_bounded_one_and_keeps_every_step(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(collect, "HOST_ROWS_BYTES", 1 << 16)  # many parts: derived every ~64 KiB of rows
    held = _loop(1_500, 200)
    streamed = _loop(1_500, 200, tmp_path / "series")
    a, b = _sorted(held.frame()), _sorted(streamed.frame())
    assert list(a.columns) == list(b.columns) and (a.dtypes == b.dtypes).all()
    assert list(a["layer"].cat.categories) == list(b["layer"].cat.categories)
    assert a.drop(columns="value").astype(str).equals(b.drop(columns="value").astype(str))
    np.testing.assert_allclose(a["value"], b["value"], rtol=0, atol=0, equal_nan=True)
    parts = sorted((tmp_path / "series").glob("part-*.parquet"))
    assert len(parts) > 3
    everything = read_series(tmp_path / "series")  # unthinned: every recorded step, readable by pandas too
    assert sorted(everything["step"].unique()) == list(range(1_500))
    assert len(pd.read_parquet(tmp_path / "series")) == len(everything)
    assert streamed._collector.nbytes() <= 1 << 16  # rows held in memory: only those not yet written


def test_a_run_that_fails_halfway_keeps_what_it_streamed(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="the loop failed"):
        _loop(300, None, tmp_path / "series", fail_at=123)
    frame = read_series(tmp_path / "series")
    assert sorted(frame["step"].unique()) == list(range(123))
    assert not list((tmp_path / "series").glob("*.partial"))


def test_a_directory_that_holds_a_series_is_not_overwritten(tmp_path: Path) -> None:
    _loop(5, None, tmp_path / "series")
    with pytest.raises(FileExistsError, match="already holds a recorded series"):
        ParquetSink(tmp_path / "series")


def test_a_training_session_streams_and_reports_from_the_stream(tmp_path: Path) -> None:
    from initdiag.integrations.session import TrainingSession

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    session = TrainingSession(tmp_path / "report", every=1, formats=("json", "csv"), max_steps=40,
                              stream_to=tmp_path / "series")
    x, y = torch.randn(16, 8), torch.randint(0, 4, (16,))
    session.begin(model, x)
    for _ in range(120):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        session.loss(loss)
    written = session.finish(model)
    reported = pd.read_csv(written["csv"])
    train = reported[reported["phase"] == "train"]
    assert 20 <= train["step"].nunique() <= 40  # the report: the bounded view
    assert read_series(tmp_path / "series")["step"].nunique() == 120  # the stream: every step
