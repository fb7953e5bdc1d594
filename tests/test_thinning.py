"""Bounded recordings: a long recording keeps its first steps one by one, then thins evenly, so the recorded
rows stay under a budget whatever the run's length (the recorder's rows and memory checked on a real loop)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from initdiag import Recorder
from initdiag.recording.thinning import Thinning, thinned_steps


def _online(every: int, budget: int, steps: int) -> list[int]:
    """The steps a recording at ``every`` keeps within ``budget`` over ``steps`` steps, step by step as the
    recorder prunes them, checked against the budget and the kept count at every step."""
    thin = Thinning(every, budget)
    kept: list[int] = []
    for step in range(steps):
        if thin.records(step):
            kept.append(step)
        if thin.over():
            kept = [s for s in kept if thin.keep(np.array([s]))[0]]
        assert len(kept) <= budget
        assert len(kept) == thin.kept
    return kept


@pytest.mark.parametrize(("every", "budget", "steps"), [(1, 100, 10_000), (3, 64, 5_000), (1, 600, 20_000)])
def test_the_kept_steps_stay_within_the_budget_and_span_the_run(every: int, budget: int, steps: int) -> None:
    kept = _online(every, budget, steps)
    dense = min(256, budget // 2)
    assert kept[:dense] == [every * r for r in range(dense)]  # the start, every recorded step
    assert budget // 2 <= len(kept) <= budget
    gaps = np.diff(kept[dense:])
    assert len(set(gaps.tolist())) == 1  # evenly spaced after the dense start
    assert kept[-1] >= steps - gaps[0] - every  # up to the end of the run


@pytest.mark.parametrize(("every", "budget", "steps"), [(1, 100, 10_000), (3, 64, 5_000), (1, 600, 20_000),
                                                     (2, 50, 60)])
def test_thinning_a_whole_run_at_once_keeps_what_the_online_rule_keeps(every: int, budget: int, steps: int) -> None:
    assert thinned_steps(list(range(0, steps, every)), budget).tolist() == _online(every, budget, steps)


def test_unbounded_keeps_every_recorded_step() -> None:
    thin = Thinning(2, None)
    assert [s for s in range(10) if thin.records(s)] == [0, 2, 4, 6, 8] and not thin.over()
    with pytest.raises(ValueError):
        Thinning(1, 1)


def _loop(steps: int, max_steps: int | None) -> tuple[Recorder, int]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(16, 8), torch.randint(0, 4, (16,))
    with Recorder(model, every=1, max_steps=max_steps, flush_every=16) as rec:
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return rec, rec._collector.nbytes()


def test_a_long_loop_records_a_bounded_series() -> None:
    _, short_bytes = _loop(400, 128)
    long, long_bytes = _loop(3_000, 128)
    frame = long.frame()
    steps = sorted(set(frame.loc[frame.phase == "train", "step"].tolist()))
    assert 64 <= len(steps) <= 128 and steps[:64] == list(range(64)) and steps[-1] > 2_800
    assert long_bytes <= 1.2 * short_bytes  # 7.5x the steps, the same memory
    per_step = len(frame) / len(steps)
    everything, _ = _loop(400, None)
    assert per_step == pytest.approx(len(everything.frame()) / 400, rel=0.05)  # the kept steps are whole


def test_a_session_keeps_every_steps_loss_in_one_growing_buffer(tmp_path: object) -> None:
    """Losses of 2,500 steps (the buffer doubles past 1,024 and 2,048), tensors and floats alike, come back in
    order as float64; no tensor is kept per step."""
    from initdiag.integrations.session import TrainingSession

    session = TrainingSession(str(tmp_path), every=1)
    values = [float(i) / 7 for i in range(2_500)]
    for i, v in enumerate(values):
        session.loss(torch.tensor(v) if i % 2 else v)
    session.loss(None)
    got = session.losses()
    assert got.dtype == np.float64 and len(got) == len(values)
    assert got == pytest.approx(np.array(values, dtype=np.float32).astype(np.float64))
    assert session._loss_buffer is not None and len(session._loss_buffer) == 4_096
