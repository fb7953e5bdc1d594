"""TensorBoard and W&B adapters: what they write, read back with each tool's own reader, equals the frame."""

from __future__ import annotations

import importlib
import json
import struct
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import initdiag
from initdiag.errors import UsageError

VERDICTS = (
    initdiag.Verdict("signal", "forward", "pass", ("0", "2"), 0.4, {}, "variance | steady", None),
    initdiag.Verdict("dead", None, "warn", ("1",), None, {}, "half of the ReLU units\nare dead", "use he", "final"),
)


@pytest.fixture(scope="module")
def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """A real recording of a tiny MLP: (the frame after 2 of 4 training steps, the whole frame), with an
    init probe before training and a final probe after."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    probe = torch.randn(32, 12)
    with initdiag.Recorder(model, every=1, run="mlp", initializer="he") as recorder:
        with recorder.probe("init"), torch.no_grad():
            model(probe)
        for step in range(4):
            x, y = torch.randn(16, 12), torch.randint(0, 3, (16,))
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step == 1:
                part = recorder.frame().copy()
        with recorder.probe("final"), torch.no_grad():
            model(probe)
    return part, recorder.frame()


def expected(frame: pd.DataFrame) -> dict[tuple[str, int], float]:
    """(tag, step) -> value, spelled out row by row (the documented scheme)."""
    out = {}
    for row in frame.itertuples():
        name = f"initdiag/{row.kind}/{row.stat}/{row.layer}" + ("" if row.phase == "train" else f"@{row.phase}")
        out[name, max(int(row.step), 0)] = float(row.value)
    assert len(out) == len(frame)
    return out


# -- TensorBoard ----------------------------------------------------------------------------------------

def read_tensorboard(log_dir: Path) -> tuple[Counter[tuple[str, int]], dict[tuple[str, int], float], Any]:
    """Scalars through TensorBoard's own EventAccumulator: (tag, step) counts and values, and the accumulator."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(str(log_dir), size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
    acc.Reload()
    counts: Counter[tuple[str, int]] = Counter()
    values = {}
    for name in acc.Tags()["scalars"]:
        for event in acc.Scalars(name):
            counts[name, event.step] += 1
            values[name, event.step] = event.value
    return counts, values, acc


def test_tensorboard_scalars_and_verdicts_read_back_equal_the_frame(frames: Any, tmp_path: Path) -> None:
    from initdiag.integrations.tensorboard import write_tensorboard

    frame = frames[1]
    assert set(frame.phase) == {"init", "train", "final"}
    log_dir = write_tensorboard(frame, tmp_path / "tb", VERDICTS)
    assert log_dir == tmp_path / "tb"
    counts, values, acc = read_tensorboard(log_dir)
    want = expected(frame)
    assert set(counts) == set(want) and max(counts.values()) == 1
    assert all(values[k] == np.float32(v) for k, v in want.items())
    assert values["initdiag/forward/var/0@init", 0] == np.float32(frame.query(
        "phase == 'init' and kind == 'forward' and stat == 'var' and layer == '0'").value.item())
    assert {s for (_, s) in counts} == {0, 1, 2, 3}
    (text,) = acc.Tensors("initdiag/verdicts/text_summary")
    assert text.step == 3
    lines = text.tensor_proto.string_val[0].decode().splitlines()
    assert lines[0] == "| check | signal | status | phase | layers | message |"
    assert lines[2] == "| signal | forward | pass | init | 0, 2 | variance \\| steady |"
    assert lines[3] == "| dead |  | warn | final | 1 | half of the ReLU units are dead |"


def test_tensorboard_sink_writes_each_row_once_as_the_frame_grows(frames: Any, tmp_path: Path) -> None:
    from initdiag.integrations.tensorboard import TensorBoardSink

    part, whole = frames
    assert 0 < len(part) < len(whole)
    with TensorBoardSink(tmp_path / "tb") as sink:
        assert sink.log(part) == len(part)
        assert sink.log(whole) == len(whole) - len(part)
        assert sink.log(whole) == 0
    counts, values, _ = read_tensorboard(tmp_path / "tb")
    assert counts == Counter(dict.fromkeys(expected(whole), 1))
    assert all(values[k] == np.float32(v) for k, v in expected(whole).items())


def test_tensorboard_writes_through_a_given_writer_and_leaves_it_open(frames: Any, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    from initdiag.integrations.tensorboard import write_tensorboard

    writer = SummaryWriter(str(tmp_path / "tb"))
    assert write_tensorboard(frames[1], None, writer=writer) == tmp_path / "tb"
    writer.add_scalar("mine", 1.0, 7)
    writer.close()
    counts, _, _ = read_tensorboard(tmp_path / "tb")
    assert counts.pop(("mine", 7)) == 1
    assert set(counts) == set(expected(frames[1]))


def test_any_other_writer_gets_add_scalar_per_value(frames: Any) -> None:
    from initdiag.integrations.tensorboard import TensorBoardSink

    class Writer:
        def __init__(self) -> None:
            self.calls: list[tuple[str, float, int]] = []

        def add_scalar(self, name: str, value: float, step: int) -> None:
            self.calls.append((name, value, step))

        def flush(self) -> None:
            pass

    writer = Writer()
    sink = TensorBoardSink(writer=writer)
    sink.log(frames[1])
    sink.close()
    assert len(writer.calls) == len(frames[1])
    assert {(n, s): v for n, v, s in writer.calls} == expected(frames[1])


def test_frames_of_several_runs_are_refused_with_the_way_out(frames: Any, tmp_path: Path) -> None:
    from initdiag.integrations.tensorboard import TensorBoardSink

    two = pd.concat([frames[1], frames[1].assign(run="other")], ignore_index=True)
    with TensorBoardSink(tmp_path / "tb") as sink, pytest.raises(UsageError, match=r"2 runs .*frame\.run == name"):
        sink.log(two)
    with TensorBoardSink(tmp_path / "tb") as sink:
        sink.log(frames[0])
        with pytest.raises(UsageError, match="one sink per run"):
            sink.log(frames[1].assign(run="other"))


# -- W&B ------------------------------------------------------------------------------------------------

@pytest.fixture
def wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``wandb`` in offline mode, everything under ``tmp_path``, no system monitor, git or code capture."""
    wandb = pytest.importorskip("wandb")
    for name, value in {"WANDB_MODE": "offline", "WANDB_DIR": tmp_path, "WANDB_SILENT": "true",
                        "WANDB_CONFIG_DIR": tmp_path / "config", "WANDB_CACHE_DIR": tmp_path / "cache",
                        "WANDB_DATA_DIR": tmp_path / "data", "WANDB_DISABLE_GIT": "true",
                        "WANDB_DISABLE_CODE": "true", "WANDB_CONSOLE": "off"}.items():
        monkeypatch.setenv(name, str(value))
    yield wandb
    wandb.teardown()


def start(wandb: Any, tmp_path: Path) -> Any:
    return wandb.init(project="initdiag-test", dir=tmp_path, settings=wandb.Settings(
        mode="offline", x_disable_stats=True, x_disable_meta=True, console="off", disable_git=True,
        save_code=False))


def finish(wandb: Any, run: Any) -> Path:
    """Finish ``run`` and stop W&B's service (only then is the offline ``.wandb`` file complete on disk);
    returns the run's directory."""
    run_dir = Path(run.dir).parent
    run.finish()
    wandb.teardown()
    return run_dir


def history(run_dir: Path) -> list[dict[str, Any]]:
    """The history rows of an offline run, from its ``.wandb`` file: LevelDB-log records (7-byte header
    ``:W&B`` + magic + version, then 32 KiB blocks of [crc u32, length u16, type u8] chunks) of
    ``wandb.proto`` ``Record`` messages."""
    pb: Any = importlib.import_module("wandb.proto.wandb_internal_pb2")
    (path,) = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    rows, pos, chunks, block = [], 7, b"", 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST
            record = pb.Record()
            record.ParseFromString(chunks)
            chunks = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return rows


def test_wandb_history_and_verdict_table_read_back_equal_the_frame(frames: Any, wandb_offline: Any,
                                                                   tmp_path: Path) -> None:
    from initdiag.integrations.wandb import log_wandb

    frame = frames[1]
    assert log_wandb(frame, VERDICTS) is False  # no active run: nothing happens
    run = start(wandb_offline, tmp_path)
    assert log_wandb(frame, VERDICTS) is True
    run_dir = finish(wandb_offline, run)
    rows = history(run_dir)
    got = {(k, row["initdiag/step"]): v for row in rows for k, v in row.items()
           if k.startswith("initdiag/") and k != "initdiag/step" and not k.startswith("initdiag/verdicts")}
    assert got == expected(frame)
    assert [row["initdiag/step"] for row in rows] == [0, 1, 2, 3, 3]
    (table_row,) = [row for row in rows if "initdiag/verdicts/path" in row]
    table = json.loads((run_dir / "files" / table_row["initdiag/verdicts/path"]).read_text())
    assert table["columns"] == ["check", "signal", "status", "phase", "layers", "message"]
    assert table["data"][0] == ["signal", "forward", "pass", "init", "0, 2", "variance | steady"]


def test_wandb_sink_logs_each_row_once_as_the_frame_grows(frames: Any, wandb_offline: Any, tmp_path: Path) -> None:
    from initdiag.integrations.wandb import WandbSink

    part, whole = frames
    with pytest.raises(UsageError, match="no active W&B run"):
        WandbSink()
    run = start(wandb_offline, tmp_path)
    sink = WandbSink()
    assert sink.log(part) == len(part)
    assert sink.log(whole) == len(whole) - len(part)
    assert sink.log(whole) == 0
    run_dir = finish(wandb_offline, run)
    logged = Counter((k, row["initdiag/step"]) for row in history(run_dir) for k in row
                     if k.startswith("initdiag/") and k != "initdiag/step")
    assert logged == Counter(dict.fromkeys(expected(whole), 1))


# -- optional imports -----------------------------------------------------------------------------------

def test_the_core_imports_neither_tensorboard_nor_wandb() -> None:
    code = ("import initdiag, initdiag.integrations, sys; "
            "assert 'tensorboard' not in sys.modules and 'wandb' not in sys.modules, "
            "[m for m in sys.modules if m.startswith(('tensorboard', 'wandb'))]")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(("blocked", "extra"), [("torch.utils.tensorboard", "tensorboard"), ("wandb", "wandb")])
def test_a_missing_package_is_one_clear_line_naming_the_extra(blocked: str, extra: str,
                                                              monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                              frames: Any) -> None:
    from initdiag.integrations.tensorboard import write_tensorboard
    from initdiag.integrations.wandb import log_wandb

    monkeypatch.setitem(sys.modules, blocked, None)
    with pytest.raises(UsageError) as caught:
        if extra == "tensorboard":
            write_tensorboard(frames[1], tmp_path)
        else:
            log_wandb(frames[1])
    message = str(caught.value)
    assert "\n" not in message and f"pip install 'initdiag[{extra}]'" in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
