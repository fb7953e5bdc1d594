"""initdiag inside other people's training: a real Lightning ``Trainer`` and a real Hugging Face ``Trainer`` on
CPU, with the callbacks; the dashboards read back with TensorBoard's own reader; the model left as it was."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
L = pytest.importorskip("lightning.pytorch")

from initdiag.integrations.lightning import InitDiagCallback  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _hooked(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]


class DeepMLP(L.LightningModule):
    """``depth`` Linear layers with ReLU between them at PyTorch's default init; ``fail_at``: raise at that batch."""

    def __init__(self, depth: int = 30, width: int = 64, fail_at: int | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = 32
        for _ in range(depth - 1):
            layers += [nn.Linear(d, width), nn.ReLU()]
            d = width
        self.net = nn.Sequential(*layers, nn.Linear(d, 10))
        self.fail_at = fail_at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, index: int) -> torch.Tensor:
        if index == self.fail_at:
            raise RuntimeError("out of data")
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def _loader(n: int = 256) -> torch.utils.data.DataLoader:
    gen = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(n, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen))
    return torch.utils.data.DataLoader(data, batch_size=32)


def _trainer(tmp_path: Path, callback: Any, epochs: int = 1) -> Any:
    return L.Trainer(max_epochs=epochs, callbacks=[callback], logger=L.loggers.CSVLogger(tmp_path / "logs"),
                     enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                     accelerator="cpu", devices=1)


def test_lightning_fit_of_a_deep_relu_net_at_default_init_reports_forward_vanishing(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = DeepMLP()
    module.eval()  # the mode the user left it in: restored after the fit
    callback = InitDiagCallback(out=tmp_path / "report", every=2, tensorboard=tmp_path / "tb")
    _trainer(tmp_path, callback, epochs=2).fit(module, _loader())
    assert set(callback.written) == {"html", "json"} and callback.written["html"].stat().st_size > 10_000
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["kind"] == "training" and summary["framework"] == "lightning"
    init, training = summary["runs"]
    assert (init["name"], training["name"]) == ("keep", "lightning")
    forward = next(v for v in init["verdicts"] if v["family"] == "signal" and v["signal"] == "forward")
    assert (forward["outcome"], forward["status"]) == ("vanishing", "fail")
    checks = {v["check"] for v in training["verdicts"]}
    assert {"diverged", "unstable", "update_ratio"} <= checks and all(v["phase"] == "training"
                                                                      for v in training["verdicts"])
    assert not _hooked(module) and not module.training and not any(m.training for m in module.modules())
    # a training report: the loss of every step (2 epochs of 8 batches) and each epoch's mean, the framework's
    # settings, the loss curve and the heatmaps of the recorded steps; nothing about audits not training
    assert len(training["losses"]) == 16 and training["steps_per_epoch"] == 8
    assert training["epoch_losses"] == pytest.approx([sum(training["losses"][:8]) / 8,
                                                      sum(training["losses"][8:]) / 8])
    settings = summary["framework_settings"]
    assert (settings["optimizer"], settings["lr"], settings["max_epochs"]) == ("Adam", "0.001", "2")
    html = callback.written["html"].read_text()
    assert "<title>initdiag training: DeepMLP</title>" in html
    assert 'id="fig-loss"' in html and "epoch mean" in html and 'id="fig-heat-' in html
    assert "takes no training step" not in html and "does not train" not in html
    assert "<dt>optimizer</dt><dd><code>Adam</code></dd>" in html
    # the trainer's own logger got per-layer series, at the steps recorded
    rows = list(csv.DictReader(next((tmp_path / "logs").rglob("metrics.csv")).open()))
    logged = [r for r in rows if r.get("initdiag/forward/var/net.0")]
    assert logged and {int(r["step"]) for r in logged} <= set(range(0, 16, 2))
    # TensorBoard reads the same series back
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "initdiag/forward/var/net.0" in tags and "initdiag/update/var/net.0" in tags
    frame = callback.session.frame()
    want = frame[(frame.layer == "net.0") & (frame.kind == "forward") & (frame.stat == "var")]
    got = {e.step: e.value for e in acc.Scalars("initdiag/forward/var/net.0")}
    assert got == pytest.approx(dict(zip(want.step, want.value.astype("float32"), strict=True)))
    assert "initdiag/verdicts/text_summary" in acc.Tags()["tensors"]


def test_fail_on_stops_the_fit_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    module = DeepMLP()
    callback = InitDiagCallback(out=tmp_path / "report", every=1, fail_on=("vanishing",))
    trainer = _trainer(tmp_path, callback, epochs=3)
    trainer.fit(module, _loader())
    assert trainer.global_step <= 1  # stopped after the first batch, not 3 epochs x 8 batches
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("initdiag:")]
    assert len(lines) == 1 and "fails vanishing" in lines[0]
    assert not _hooked(module)


def test_a_fit_that_raises_leaves_the_model_as_it_was(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = DeepMLP(depth=5, fail_at=3)
    module.eval()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    callback = InitDiagCallback(out=tmp_path / "report", every=1)
    with pytest.raises(RuntimeError, match="out of data"):
        _trainer(tmp_path, callback).fit(module, _loader())
    assert not _hooked(module) and not any(m.training for m in module.modules())
    assert not (tmp_path / "report").exists()  # nothing written for a fit that did not end
    assert set(before) == set(module.state_dict())


class _RankOne(InitDiagCallback):
    """The callback as a process of global rank 1 sees it: the trainer says it is not global zero."""

    def _rank_one(self, trainer: Any) -> Any:
        class View:
            is_global_zero = False

            def __getattr__(self, name: str) -> Any:
                return getattr(trainer, name)
        return View()

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        super().setup(self._rank_one(trainer), pl_module, stage)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(self._rank_one(trainer), pl_module, batch, batch_idx)


def test_a_process_of_rank_above_zero_writes_nothing(tmp_path: Path) -> None:
    """On a rank other than 0 the callback neither audits, records nor writes (Lightning's DDP processes ask
    ``trainer.is_global_zero``; here a real single-process fit answers False to it)."""
    torch.manual_seed(0)
    module = DeepMLP(depth=4)
    callback = _RankOne(out=tmp_path / "report", every=1, tensorboard=tmp_path / "tb")
    _trainer(tmp_path, callback).fit(module, _loader())
    assert not callback.session.started and not callback.written
    assert not (tmp_path / "report").exists() and not (tmp_path / "tb").exists()
    assert not _hooked(module)


def _bert(layers: int = 4) -> Any:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=200, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                                     intermediate_size=128, max_position_embeddings=64, num_labels=3)
    return transformers.BertForSequenceClassification(config)


class _Tokens(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __init__(self, n: int = 96) -> None:
        gen = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 200, (n, 16), generator=gen)
        self.labels = torch.randint(0, 3, (n,), generator=gen)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def _hf_args(tmp_path: Path, **kwargs: Any) -> Any:
    transformers = pytest.importorskip("transformers")
    return transformers.TrainingArguments(output_dir=str(tmp_path / "hf"), num_train_epochs=1,
                                          per_device_train_batch_size=16, report_to=[], save_strategy="no",
                                          use_cpu=True, disable_tqdm=True, logging_strategy="no", **kwargs)


def test_hugging_face_fit_of_a_4_layer_bert_records_every_encoder_projection(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from initdiag.integrations.transformers import InitDiagCallback as HFCallback

    torch.manual_seed(0)
    model = _bert()
    with HFCallback(out=tmp_path / "report", every=1) as callback:
        transformers.Trainer(model=model, args=_hf_args(tmp_path, max_grad_norm=1e-3), train_dataset=_Tokens(),
                             callbacks=[callback]).train()
    assert (tmp_path / "report" / "report.html").exists()
    frame = callback.session.frame()
    projections = [f"bert.encoder.layer.{i}.{p}" for i in range(4) for p in (
        "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
        "intermediate.dense", "output.dense")]
    for kind in ("forward", "backward", "weight_grad"):
        seen = set(frame[frame.kind == kind].layer.astype(str))
        assert set(projections) <= seen, (kind, sorted(set(projections) - seen))
    # weight gradients are read after clipping: the clipped total norm is 1e-3, so no layer's is above it
    grads = frame[(frame.kind == "weight_grad")]
    sizes = {name: p.numel() for name, p in model.named_parameters()}
    for layer, rows in grads.groupby(grads.layer.astype(str)):
        numel = sizes[f"{layer}.weight"]
        energy = rows[rows.stat == "var"].value.to_numpy() + rows[rows.stat == "mean_sq"].value.to_numpy()
        assert (energy * numel <= (1e-3) ** 2 * 1.01).all(), layer
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["kind"] == "training" and [r["name"] for r in summary["runs"]] == ["keep", "transformers"]
    steps = len(_Tokens()) // 16  # one epoch of 96 samples in batches of 16
    training = summary["runs"][1]
    assert len(training["losses"]) == steps and training["epoch_losses"] == pytest.approx(
        [sum(training["losses"]) / steps])
    assert summary["framework_settings"]["max_grad_norm"] == "0.001"
    html = (tmp_path / "report" / "report.html").read_text()
    assert 'id="fig-loss"' in html and 'id="fig-heat-' in html and "takes no training step" not in html
    assert not _hooked(model)


def test_hugging_face_fit_that_raises_leaves_no_hook(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from initdiag.integrations.transformers import InitDiagCallback as HFCallback

    class Boom(transformers.TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 2:
                raise RuntimeError("disk full")

    torch.manual_seed(0)
    model = _bert(layers=2)
    model.eval()
    with pytest.raises(RuntimeError, match="disk full"), HFCallback(out=tmp_path / "report") as callback:
        transformers.Trainer(model=model, args=_hf_args(tmp_path), train_dataset=_Tokens(),
                             callbacks=[callback, Boom()]).train()
    assert not _hooked(model) and not model.training
    assert not (tmp_path / "report").exists()
