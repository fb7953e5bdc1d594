"""The audit on real architectures with known answers (tests/zoo.py): every published model with its library's own
initialization passes (it trains, so no verdict may fail), every broken variant is caught.

CI runs the cases below (the issue's named ones and one or more per family); ``benchmarks/zoo.py`` runs the
whole zoo and prints its tally."""

from __future__ import annotations

import pytest
from zoo import CASES, by_name

import initdiag

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IN_CI = (
    # the named cases
    "resnet18", "resnet50", "vgg11_bn", "vit_b_16", "convnext_tiny", "bert_6l", "gpt2_6l",
    "resnet18_no_norm_he", "resnet18_zeros", "vgg11_normal1", "cnn30_default",
    # other families and designs: zero-init residuals, normalizer-free, mixers, RMS norms, encoder-decoders
    "resnet50_zero_init_residual", "mobilenet_v2", "efficientnet_b0", "densenet121", "swin_t",
    "timm_mixer_s16", "timm_nf_resnet26", "timm_nfnet_l0", "timm_deit_tiny", "llama_4l", "t5_2l", "distilbert_4l",
    # broken variants of each kind, and the theory cases
    "resnet50_no_norm_he", "mobilenet_v2_zeros", "timm_vit_tiny_zeros", "bert_6l_zeros", "mlp30_relu_he",
    "mlp30_relu_default", "mlp30_relu_xavier", "mlp30_functional_relu_he", "mlp30_functional_relu_default",
    "mlp30_tanh_chaotic", "mlp10_relu_dead", "mlp10_constant", "resmlp16_he", "resmlp16_fixup", "resmlp16_skipinit",
)


def test_the_ci_cases_are_in_the_zoo() -> None:
    names = {c.name for c in CASES}
    assert set(IN_CI) <= names
    assert len(CASES) >= 50 and {c.family for c in CASES} >= {"resnet", "vit", "bert", "gpt2", "mixer", "nfnet"}


@pytest.mark.parametrize("name", IN_CI)
def test_the_audit_gives_the_known_answer(name: str) -> None:
    case = by_name(name)
    if not case.available():
        pytest.skip(f"needs {', '.join(case.missing())}")
    result = initdiag.audit(case.build(), **case.audit_kwargs())
    failed = sorted({c for run in result.runs for c in run.failed})
    messages = [f"{v.outcome} ({v.signal}): {v.message[:300]}" for v in result.verdicts if v.status == "fail"]
    assert case.matches(result), (case.expect_text(), failed, messages)
