"""The wide zoo's harness (benchmarks/wide_zoo): a fixed handful of its models through the same code the full
run uses, checking that each (model, variant) gets one record whose status says what the audit found, and that
a skipped spec, a timeout and a dead child are recorded instead of stopping the run.

Not a measure of the audit's verdicts (``python benchmarks/wide_zoo/run.py`` is): a known-good model may be
``failed`` here; the record must only agree with its verdicts."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.wide_zoo import run  # noqa: E402
from benchmarks.wide_zoo.catalog import ModelSpec, catalog, is_held_out, size_key  # noqa: E402
from benchmarks.wide_zoo.child import run_variant  # noqa: E402
from benchmarks.wide_zoo.summary import latest, tally  # noqa: E402
from benchmarks.wide_zoo.variants import norm_absorbs, prepare, variants_for  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IN_PROCESS = ("hf/bert", "hf/gpt2", "tv/resnet18", "tv/fasterrcnn_mobilenet_v3_large_320_fpn", "tv/fcn_resnet50")
"""Known-good models audited in this process: an HF encoder and decoder, a torchvision classifier, detector and
segmentation model; the timm model is the smallest of timm's ``resnet`` family (whatever its name). Only
libraries of the test extra: segmentation-models-pytorch and MONAI come with the ``zoo`` extra."""

FIELDS = {"id", "library", "kind", "variant", "held_out", "expect", "status", "failed", "failing", "warning", "error",
          "phase", "why", "note", "build_s", "audit_s"}


@pytest.fixture(scope="module")
def specs() -> dict[str, ModelSpec]:
    return {s.id: s for s in catalog(["timm", "hf", "tv"])}


def _timm_resnet(specs: dict[str, ModelSpec]) -> ModelSpec:
    return next(s for s in specs.values() if s.library == "timm" and s.note.startswith("family resnet;"))


def _consistent(rec: dict[str, Any]) -> None:
    """The record has every field, and its status is what its verdicts say."""
    assert set(rec) == FIELDS
    assert rec["status"] in ("clean", "warned", "failed"), rec["error"]
    assert (rec["status"] == "failed") == bool(rec["failing"]) == bool(rec["failed"])
    assert (rec["status"] == "warned") == (bool(rec["warning"]) and not rec["failing"])
    assert {f["check"] for f in rec["failing"]} <= set(rec["failed"]) | {f["outcome"] for f in rec["failing"]}
    assert rec["audit_s"] > 0 and rec["build_s"] > 0


def test_the_catalogue_is_wide_with_unique_ids_and_a_held_out_quarter(specs: dict[str, ModelSpec]) -> None:
    libraries = {s.library for s in specs.values()}
    assert libraries == {"timm", "hf", "tv"}
    assert sum(s.library == "timm" for s in specs.values()) >= 80
    assert sum(s.library == "hf" and not s.skip for s in specs.values()) >= 60
    assert {s.kind for s in specs.values() if s.library == "tv"} >= {"classification", "detection", "segmentation",
                                                                      "video", "optical-flow"}
    held = [s for s in specs.values() if s.held_out]
    assert 0.15 < len(held) / len(specs) < 0.35
    assert all(s.held_out == is_held_out(s.id) for s in specs.values())
    assert all(s.skip or s.build is not None for s in specs.values())


def test_size_key_puts_the_smallest_variant_first() -> None:
    assert min(["vit_base_patch16_224", "vit_tiny_patch16_224", "vit_small_patch16_224"], key=size_key) == \
        "vit_tiny_patch16_224"
    assert min(["resnet50", "resnet18", "resnet101"], key=size_key) == "resnet18"
    assert min(["edgenext_small", "edgenext_xx_small", "edgenext_x_small"], key=size_key) == "edgenext_xx_small"
    assert min(["levit_384_s8", "levit_128s"], key=size_key) == "levit_128s"


@pytest.mark.parametrize("spec_id", IN_PROCESS)
def test_a_known_good_model_gets_a_record_that_agrees_with_its_verdicts(spec_id: str,
                                                                        specs: dict[str, ModelSpec]) -> None:
    rec = run_variant(specs[spec_id], "good")
    _consistent(rec)
    assert rec["expect"] == "passes" and rec["id"] == spec_id


def test_zeroed_timm_model_is_recorded_as_failed(specs: dict[str, ModelSpec]) -> None:
    rec = run_variant(_timm_resnet(specs), "zeros")
    _consistent(rec)
    assert rec["status"] == "failed" and rec["expect"] == "fails"
    assert "no_signal" in {f["outcome"] for f in rec["failing"]}


def test_normal1_in_a_batch_normalized_conv_net_is_a_theory_case() -> None:
    bn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8),
                       nn.Flatten(), nn.Linear(8, 10))
    plain = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8))
    assert norm_absorbs(bn) and not norm_absorbs(plain)
    assert prepare("normal1", bn).expect == "theory"
    prepared = prepare("normal1", plain)
    assert prepared.expect == "fails" and float(plain[0].weight.detach().std()) == pytest.approx(1.0, abs=0.3)
    assert prepare("no_norm_he", nn.Sequential(nn.Linear(4, 4))).skip
    removed = prepare("no_norm_he", nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)))
    assert isinstance(removed.model[1], nn.Identity) and not removed.skip
    zeroed = prepare("zeros", nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 4), nn.LayerNorm(4))).model
    assert not any(p.abs().sum() for p in (zeroed[0].weight, zeroed[1].weight, zeroed[1].bias))
    assert torch.equal(zeroed[2].weight, torch.ones(4))
    assert variants_for(False) == ("good", "zeros", "normal1")


def test_the_subprocess_runner_records_each_variant(specs: dict[str, ModelSpec]) -> None:
    records = run.run_model(specs["tv/mobilenet_v3_small"], ["good", "zeros"], timeout=120)
    assert [r["variant"] for r in records] == ["good", "zeros"]
    for rec in records:
        _consistent(rec)
    assert records[1]["status"] == "failed"


def test_a_timeout_and_a_dead_child_are_recorded_and_the_run_goes_on(specs: dict[str, ModelSpec]) -> None:
    slow = run.run_model(specs["tv/mobilenet_v3_small"], ["good", "zeros"], timeout=0.3)
    assert [(r["variant"], r["status"]) for r in slow] == [("good", "timeout"), ("zeros", "timeout")]
    dead = run.run_model(ModelSpec("tv/not-in-the-catalogue", "tv", "segmentation", nn.Identity,
                                   input_shape=(1, 8, 8)), ["good"], timeout=120)
    assert dead[0]["status"] == "error" and dead[0]["phase"] == "child"
    assert "exit code 1" in dead[0]["error"] and "KeyError" in dead[0]["error"]
    skipped = run.run_model(ModelSpec("hf/x", "hf", "decoder", nn.Identity, skip="needs a GPU"), ["good"], 1)
    assert skipped[0]["status"] == "skipped" and skipped[0]["why"] == "needs a GPU"


def test_the_summary_counts_false_fails_and_caught_variants(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    def rec(spec_id: str, variant: str, expect: str, status: str, held: bool = False) -> dict[str, Any]:
        return {"id": spec_id, "library": spec_id.split("/")[0], "kind": "k", "variant": variant, "held_out": held,
                "expect": expect, "status": status, "failed": [], "failing": [], "warning": [], "error": "",
                "phase": "audit" if status == "error" else "", "why": "", "note": "", "build_s": 1.0,
                "audit_s": 2.0}

    records = [rec("a/m", "good", "passes", "error"), rec("a/m", "good", "passes", "failed"),
               rec("a/m", "zeros", "fails", "failed"), rec("a/n", "good", "passes", "warned", True),
               rec("a/n", "normal1", "fails", "clean", True), rec("a/n", "normal1", "theory", "clean", True),
               rec("b/o", "good", "passes", "timeout")]
    one = tally("a", [r for r in latest(records) if r["library"] == "a"])
    assert (one.models, one.clean, one.warned, one.false_fails, one.caught, one.broken, one.theory) == \
        (2, 0, 1, 1, 1, 1, 1)
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert run.main(["--summary", str(path)]) == 0
    out = capsys.readouterr().out
    assert "held-out part" in out and "false fail" in out and "timeouts" in out
    assert run.main(["--list", "--library", "monai"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == len(catalog(["monai"])) and listed[0].startswith("monai/")
