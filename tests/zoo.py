"""A zoo of real architectures with known answers, for testing ``initdiag.audit``'s verdicts.

Each :class:`ZooCase` builds a (small) model and says what an audit of it must find: ``"healthy"`` (a
published architecture with its library's own initialization, or an initialization theory shows to
preserve the signal: it trains, so no verdict may fail) or the checks that must fail. Not a test module:
tests and ``benchmarks/zoo.py`` import it (``from zoo import CASES``, with ``tests/`` on ``sys.path``)::

    for case in CASES:
        if case.available():
            result = initdiag.audit(case.build(), **case.audit_kwargs())
            assert case.matches(result), case.name
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn
from zoo_models import (
    FunctionalReluMLP,
    ResidualMLP,
    fan_in_normal,
    he,
    hf,
    mlp,
    normal1,
    plain_cnn,
    reinit,
    resnet_no_norm_he,
    seeded,
    std_normal,
    timm_model,
    tv,
    vgg11_std_normal,
    zeroed,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

__all__ = ["CASES", "HEALTHY", "ZooCase", "by_name", "select"]

HEALTHY = "healthy"


@dataclass(frozen=True)
class ZooCase:
    """One model with a known answer.

    ``expect`` is ``"healthy"`` (no verdict may fail) or the checks that must fail: all of them, or with
    ``match="any"`` at least one. Other checks failing besides the expected ones do not make a mismatch.
    ``requires`` names the optional packages the builder imports.
    """

    name: str
    family: str
    build: Callable[[], nn.Module]
    expect: str | frozenset[str]
    why: str
    input_shape: tuple[int, ...] = (3, 32, 32)
    input_dtype: str = "float"
    vocab: int | None = None
    loss: str = "auto"
    batches: int = 2
    batch_size: int = 8
    match: Literal["all", "any"] = "all"
    requires: tuple[str, ...] = ()

    @property
    def healthy(self) -> bool:
        """True for a known-good case."""
        return self.expect == HEALTHY

    def available(self) -> bool:
        """True when every package in ``requires`` can be imported."""
        return all(importlib.util.find_spec(pkg) is not None for pkg in self.requires)

    def missing(self) -> tuple[str, ...]:
        """The packages of ``requires`` that are not installed."""
        return tuple(pkg for pkg in self.requires if importlib.util.find_spec(pkg) is None)

    def audit_kwargs(self) -> dict[str, Any]:
        """The keyword arguments for ``initdiag.audit(case.build(), **case.audit_kwargs())``."""
        kwargs: dict[str, Any] = {"input_shape": self.input_shape, "batches": self.batches,
                                  "batch_size": self.batch_size, "input_dtype": self.input_dtype, "loss": self.loss}
        if self.vocab is not None:
            kwargs["vocab"] = self.vocab
        return kwargs

    def expect_text(self) -> str:
        """``healthy`` or the expected failing checks, joined by "+" (all) or "|" (any)."""
        if isinstance(self.expect, str):
            return self.expect
        return ("+" if self.match == "all" else "|").join(sorted(self.expect))

    def matches_failed(self, failed: Iterable[str]) -> bool:
        """Whether an audit whose runs failed the checks ``failed`` gives this case's expected answer."""
        failed = set(failed)
        if isinstance(self.expect, str):
            return not failed
        return self.expect <= failed if self.match == "all" else bool(self.expect & failed)

    def matches(self, result: Any) -> bool:
        """Whether an ``AuditResult`` gives the expected answer (see :meth:`matches_failed`)."""
        return self.matches_failed(c for run in result.runs for c in run.failed)


def _fs(*checks: str) -> frozenset[str]:
    return frozenset(checks)


TV, TIMM, HF = ("torchvision",), ("timm",), ("transformers",)
IMG64 = (3, 64, 64)
TEXT: dict[str, Any] = {"input_shape": (16,), "input_dtype": "long", "vocab": 1000}
LM: dict[str, Any] = {**TEXT, "loss": "ce"}  # (batch, vocab, seq) logits: next-token-style cross-entropy per position
BERT: dict[str, Any] = {"vocab_size": 1000, "hidden_size": 256, "num_attention_heads": 4,
                        "intermediate_size": 1024, "max_position_embeddings": 64}
GPT2: dict[str, Any] = {"vocab_size": 1000, "n_embd": 256, "n_head": 4, "n_positions": 64, "bos_token_id": 0,
                        "eos_token_id": 0}
LLAMA: dict[str, Any] = {"vocab_size": 1000, "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
                         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}
T5: dict[str, Any] = {"vocab_size": 1000, "d_model": 128, "d_kv": 32, "d_ff": 512, "num_layers": 2, "num_heads": 4,
                      "decoder_start_token_id": 0, "pad_token_id": 0}
VIT_HF: dict[str, Any] = {"image_size": 32, "patch_size": 4, "hidden_size": 192, "num_hidden_layers": 4,
                          "num_attention_heads": 3, "intermediate_size": 768, "num_labels": 10}
MLP_IN = (64,)

CASES: tuple[ZooCase, ...] = (
    # -- the cases: published models, their library's init ------------------------------------------
    ZooCase("resnet18", "resnet", tv("resnet18"), HEALTHY, "He et al. 2016 with BatchNorm; torchvision's He init",
            requires=TV),
    ZooCase("resnet50", "resnet", tv("resnet50"), HEALTHY, "bottleneck ResNet with BN; trains from torchvision's init",
            requires=TV),
    ZooCase("vgg11_bn", "vgg", tv("vgg11_bn"), HEALTHY, "VGG-A with BatchNorm after every conv; He-init convs",
            requires=TV),
    ZooCase("vit_b_16", "vit", tv("vit_b_16", image_size=64), HEALTHY,
            "Dosovitskiy et al. 2021 pre-LN ViT; torchvision's trunc-normal/zero-head init", input_shape=IMG64,
            requires=TV),
    ZooCase("convnext_tiny", "convnext", tv("convnext_tiny"), HEALTHY,
            "Liu et al. 2022; LayerNorm, layer scale 1e-6, trunc-normal 0.02", input_shape=IMG64, requires=TV),
    ZooCase("bert_6l", "bert", hf("BertForSequenceClassification", "BertConfig", num_hidden_layers=6, **BERT),
            HEALTHY, "post-LN BERT, HF init N(0, 0.02); BERT-small configs train from it", **TEXT, requires=HF),
    ZooCase("gpt2_6l", "gpt2", hf("GPT2LMHeadModel", "GPT2Config", classes_first=True, n_layer=6, **GPT2), HEALTHY,
            "pre-LN GPT-2, N(0, 0.02) with residual projections scaled 1/sqrt(2L)", **LM, requires=HF),
    # -- the broken cases -------------------------------------------------------------------------------
    ZooCase("resnet18_no_norm_he", "resnet", resnet_no_norm_he("resnet18"), _fs("exploding"),
            "no BN, He branches: the residual stream about doubles per block (~200x over 8 at 64x64; Zhang et al. "
            "2019)", input_shape=IMG64, requires=TV),
    ZooCase("resnet18_zeros", "resnet", zeroed(tv("resnet18")), _fs("no_signal", "symmetry"),
            "all Conv/Linear weights and biases zero: no signal, every neuron identical", requires=TV),
    ZooCase("vgg11_normal1", "vgg", vgg11_std_normal, _fs("exploding"),
            "no BN, W ~ N(0, 1): variance grows by ~fan_in/2 (hundreds) per layer", requires=TV),
    ZooCase("cnn30_default", "cnn", seeded(plain_cnn), _fs("vanishing"),
            "30 plain 3x3 convs at PyTorch's default (var 1/(3 fan_in)): x1/6 per ReLU layer (He et al. 2015)"),
    # -- more published models, their library's init -------------------------------------------------------------
    ZooCase("resnet50_zero_init_residual", "resnet", tv("resnet50", zero_init_residual=True), HEALTHY,
            "last BN of each branch gamma=0 (Goyal et al. 2017): identity blocks at init", requires=TV),
    ZooCase("resnext50_32x4d", "resnet", tv("resnext50_32x4d"), HEALTHY,
            "Xie et al. 2017 grouped-conv ResNet with BN", requires=TV),
    ZooCase("wide_resnet50_2", "resnet", tv("wide_resnet50_2"), HEALTHY,
            "Zagoruyko & Komodakis 2016, BN; torchvision's He init", requires=TV),
    ZooCase("densenet121", "densenet", tv("densenet121"), HEALTHY,
            "Huang et al. 2017, BN-ReLU-conv with concatenation", requires=TV),
    ZooCase("mobilenet_v2", "mobilenet", tv("mobilenet_v2"), HEALTHY,
            "Sandler et al. 2018 inverted residuals with BN, linear bottlenecks", requires=TV),
    ZooCase("mobilenet_v3_small", "mobilenet", tv("mobilenet_v3_small"), HEALTHY,
            "Howard et al. 2019, hardswish, squeeze-excite, BN", requires=TV),
    ZooCase("efficientnet_b0", "efficientnet", tv("efficientnet_b0"), HEALTHY,
            "Tan & Le 2019 MBConv with BN, SiLU, SE; torchvision init", requires=TV),
    ZooCase("shufflenet_v2_x0_5", "shufflenet", tv("shufflenet_v2_x0_5"), HEALTHY,
            "Ma et al. 2018 channel-shuffle blocks with BN", requires=TV),
    ZooCase("regnet_y_400mf", "regnet", tv("regnet_y_400mf"), HEALTHY,
            "Radosavovic et al. 2020, BN, SE; fan-out He convs", requires=TV),
    ZooCase("swin_t", "swin", tv("swin_t"), HEALTHY, "Liu et al. 2021 windowed pre-LN transformer, trunc-normal 0.02",
            input_shape=IMG64, requires=TV),
    ZooCase("timm_vit_tiny", "vit", timm_model("vit_tiny_patch16_224", img_size=64), HEALTHY,
            "timm ViT-Ti, pre-LN, trunc-normal 0.02 (head too)", input_shape=IMG64, requires=TIMM),
    ZooCase("timm_deit_tiny", "deit", timm_model("deit_tiny_patch16_224", img_size=64), HEALTHY,
            "Touvron et al. 2021 DeiT-Ti, ViT init; trains on ImageNet from scratch", input_shape=IMG64,
            requires=TIMM),
    ZooCase("timm_mixer_s16", "mixer", timm_model("mixer_s16_224", img_size=64), HEALTHY,
            "Tolstikhin et al. 2021 MLP-Mixer, pre-LN token/channel MLPs, zero head", input_shape=IMG64, requires=TIMM),
    ZooCase("timm_resmlp_12", "mixer", timm_model("resmlp_12_224", img_size=64), HEALTHY,
            "Touvron et al. 2022 ResMLP: Affine norm, layer scale 1e-4", input_shape=IMG64, requires=TIMM),
    ZooCase("timm_nf_resnet26", "nfnet", timm_model("nf_resnet26"), HEALTHY,
            "Brock et al. 2021a NF-ResNet: ScaledStdConv2d, alpha/beta scaling, zero-gain last conv",
            input_shape=IMG64, requires=TIMM),
    ZooCase("timm_nfnet_l0", "nfnet", timm_model("nfnet_l0"), HEALTHY,
            "Brock et al. 2021b NFNet-L0: scaled weight standardization, SE, zero-gain last conv", input_shape=IMG64,
            requires=TIMM),
    ZooCase("timm_efficientnet_b0", "efficientnet", timm_model("efficientnet_b0"), HEALTHY,
            "timm EfficientNet-B0 with its own fan-out init, BN", input_shape=IMG64, requires=TIMM),
    ZooCase("timm_convnext_atto", "convnext", timm_model("convnext_atto"), HEALTHY,
            "ConvNeXt-Atto: LayerNorm, layer scale, trunc-normal 0.02", input_shape=IMG64, requires=TIMM),
    ZooCase("roberta_4l", "bert", hf("RobertaForSequenceClassification", "RobertaConfig", num_hidden_layers=4,
                                     pad_token_id=1, **{**BERT, "max_position_embeddings": 66}),
            HEALTHY, "Liu et al. 2019 RoBERTa: BERT's post-LN encoder and N(0, 0.02) init", **TEXT, requires=HF),
    ZooCase("distilbert_4l", "bert", hf("DistilBertForSequenceClassification", "DistilBertConfig", vocab_size=1000,
                                        dim=256, n_layers=4, n_heads=4, hidden_dim=1024, max_position_embeddings=64),
            HEALTHY, "Sanh et al. 2019 DistilBERT, post-LN, N(0, 0.02)", **TEXT, requires=HF),
    ZooCase("gpt2_cls_4l", "gpt2", hf("GPT2ForSequenceClassification", "GPT2Config", n_layer=4, pad_token_id=0,
                                      num_labels=10, **GPT2),
            HEALTHY, "GPT-2 body with a classification head on the last token", **TEXT, requires=HF),
    ZooCase("llama_4l", "llama", hf("LlamaForCausalLM", "LlamaConfig", classes_first=True, **LLAMA), HEALTHY,
            "Touvron et al. 2023 pre-RMSNorm, SwiGLU, RoPE; HF init N(0, 0.02)", **LM, requires=HF),
    ZooCase("t5_2l", "t5", hf("T5ForConditionalGeneration", "T5Config", **T5), HEALTHY,
            "Raffel et al. 2020 T5: pre-RMSNorm (T5LayerNorm), Mesh-TF 1/sqrt(d) init", **LM, requires=HF),
    ZooCase("hf_vit_4l", "vit", hf("ViTForImageClassification", "ViTConfig", key="pixel_values", **VIT_HF), HEALTHY,
            "HF ViT, pre-LN, trunc-normal 0.02", requires=HF),
    # -- library models broken on purpose ------------------------------------------------------------------------
    ZooCase("resnet50_no_norm_he", "resnet", resnet_no_norm_he("resnet50"), _fs("exploding"),
            "no BN, He branches: the stream about doubles per block, 16 bottleneck blocks", input_shape=IMG64,
            requires=TV),
    ZooCase("mobilenet_v2_zeros", "mobilenet", zeroed(tv("mobilenet_v2")), _fs("no_signal", "symmetry"),
            "zero convs: BN(0) = beta = 0, every output zero, every filter identical", requires=TV),
    ZooCase("timm_vit_tiny_zeros", "vit", zeroed(timm_model("vit_tiny_patch16_224", img_size=64)),
            _fs("no_signal", "symmetry"), "every Conv/Linear weight and bias zero: each outputs exactly 0",
            input_shape=IMG64, requires=TIMM),
    ZooCase("bert_6l_zeros", "bert", zeroed(hf("BertForSequenceClassification", "BertConfig", num_hidden_layers=6,
                                               **BERT)),
            _fs("no_signal", "symmetry"), "every Linear zero: attention, FFN, pooler, classifier output exactly 0",
            **TEXT, requires=HF),
    ZooCase("timm_vit_tiny_normal1", "vit", seeded(normal1(timm_model("vit_tiny_patch16_224", img_size=64))),
            _fs("output_scale", "attention_entropy"), "every weight N(0, 1): logits spread ~sqrt(192) over 10 "
            "classes, attention logits ~d: one-hot at init (Zhai et al. 2023)", input_shape=IMG64, requires=TIMM),
    ZooCase("gpt2_6l_normal1", "gpt2", seeded(normal1(hf("GPT2LMHeadModel", "GPT2Config", classes_first=True,
                                                          n_layer=6, **GPT2))),
            _fs("output_scale", "attention_entropy"), "every weight N(0, 1) (the tied head too): logits spread "
            "~sqrt(256), attention near one-hot", **LM, requires=HF),
    # -- plain nets, theory fixes the answer ---------------------------------------------------------------------
    ZooCase("mlp30_relu_he", "mlp", seeded(lambda: reinit(mlp(), he, bias=0.0)), HEALTHY,
            "He init keeps the variance of a ReLU net constant with depth (He et al. 2015)", input_shape=MLP_IN),
    ZooCase("cnn30_relu_he", "cnn", seeded(lambda: reinit(plain_cnn(channels=64), he, bias=0.0)), HEALTHY,
            "30 plain 64-channel convs, He init, converge (He et al. 2015 Fig. 3); at 16 channels the finite-width "
            "drift (Hanin & Rolnick 2018) costs ~x0.85 per layer"),
    ZooCase("mlp30_relu_default", "mlp", seeded(mlp), _fs("vanishing"),
            "PyTorch default var 1/(3 fan_in) with ReLU: x1/6 per layer, 6^-29 over 30 layers", input_shape=MLP_IN),
    ZooCase("mlp30_relu_xavier", "mlp", seeded(lambda: reinit(mlp(), nn.init.xavier_normal_, bias=0.0)),
            _fs("vanishing"), "Xavier (var 1/fan_in at equal widths) with ReLU halves the variance per layer",
            input_shape=MLP_IN),
    ZooCase("cnn30_relu_xavier", "cnn", seeded(lambda: reinit(plain_cnn(), nn.init.xavier_normal_, bias=0.0)),
            _fs("vanishing"), "30-layer plain conv net with Xavier stalls (He et al. 2015, Fig. 3): x1/2 per layer"),
    ZooCase("mlp30_functional_relu_he", "mlp", seeded(lambda: reinit(FunctionalReluMLP(), he, bias=0.0)), HEALTHY,
            "F.relu in forward, He init: the same signal as nn.ReLU modules", input_shape=MLP_IN),
    ZooCase("mlp30_functional_relu_default", "mlp", seeded(FunctionalReluMLP), _fs("vanishing"),
            "F.relu in forward at PyTorch's default: x1/6 per layer", input_shape=MLP_IN),
    ZooCase("mlp10_relu_normal1", "mlp", seeded(lambda: reinit(mlp(10), std_normal(1.0), bias=0.0)),
            _fs("exploding"), "W ~ N(0, 1) at width 256: variance x128 per ReLU layer", input_shape=MLP_IN),
    ZooCase("mlp30_tanh_chaotic", "mlp", seeded(lambda: reinit(mlp(act=nn.Tanh), fan_in_normal(4.0), bias=0.0)),
            _fs("exploding", "saturation"),
            "tanh at sigma_w^2=4: chaotic phase, gradients grow and units saturate (Poole et al. 2016)",
            input_shape=MLP_IN, match="any"),
    ZooCase("mlp10_tanh_normal1", "mlp", seeded(lambda: reinit(mlp(10, act=nn.Tanh), std_normal(1.0), bias=0.0)),
            _fs("saturation"), "tanh pre-activations of std ~16: nearly every unit at +-1 (Glorot & Bengio 2010)",
            input_shape=MLP_IN),
    ZooCase("mlp10_relu_dead", "mlp", seeded(lambda: reinit(mlp(10), he, bias=-10.0)), _fs("dead"),
            "He weights, biases -10: every pre-activation negative, every ReLU dead for every input",
            input_shape=MLP_IN),
    ZooCase("mlp10_constant", "mlp", seeded(lambda: reinit(mlp(10), lambda t: nn.init.constant_(t, 1 / t.shape[1]), 0)),
            _fs("symmetry"), "all weights 1/fan_in: identical neurons get identical gradients forever",
            input_shape=MLP_IN),
    ZooCase("mlp10_zeros", "mlp", seeded(lambda: reinit(mlp(10), nn.init.zeros_, bias=0.0)),
            _fs("no_signal", "symmetry"), "zero weights and biases: zero outputs, every neuron identical",
            input_shape=MLP_IN),
    ZooCase("resmlp16_he", "resmlp", seeded(ResidualMLP), _fs("exploding"),
            "unnormalized residual MLP, He branches: the stream doubles per block, 2^16 (De & Smith 2020)",
            input_shape=MLP_IN),
    ZooCase("resmlp16_fixup", "resmlp", seeded(lambda: ResidualMLP(init="fixup")), HEALTHY,
            "Fixup (Zhang et al. 2019): zero last branch layer, scaled first; trains without normalization",
            input_shape=MLP_IN),
    ZooCase("resmlp16_skipinit", "resmlp", seeded(lambda: ResidualMLP(init="skipinit")), HEALTHY,
            "SkipInit (De & Smith 2020): branches times a zero-initialized scalar; identity at init",
            input_shape=MLP_IN),
)


def by_name(name: str) -> ZooCase:
    """The case called ``name``."""
    for case in CASES:
        if case.name == name:
            return case
    raise KeyError(f"no zoo case {name!r}; choose from {', '.join(c.name for c in CASES)}")


def select(only: Iterable[str] = (), family: str | None = None) -> list[ZooCase]:
    """The cases named in ``only`` (all when empty), of ``family`` when given, in registry order."""
    names = set(only)
    unknown = names - {c.name for c in CASES}
    if unknown:
        raise KeyError(f"no zoo case {', '.join(sorted(unknown))}")
    return [c for c in CASES if (not names or c.name in names) and (family is None or c.family == family)]
