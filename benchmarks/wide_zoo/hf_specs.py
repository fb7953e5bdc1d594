"""Hugging Face transformers: every model type with a task head we can feed, from a small config, at HF's init.

The model types come from transformers' task mappings, each type under the first that has it: seq2seq LM
(encoder-decoder), speech seq2seq (audio), masked LM (encoder), causal LM (decoder, or state-space when the
config has a state size), image classification (vision), audio classification and CTC (audio). Each
type's default config is shrunk (:func:`shrink`: 2 layers, width 64, 4 heads, vocabulary 1024, 32x32 images,
...) and built with the task's model class. :class:`Adapter` feeds it positional tensors as
keywords and returns its logits (classes first for per-token logits, the layout ``loss="ce"`` takes).
Types whose model needs inputs of another modality (a vision or audio tower beside a text model) are skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .catalog import SEED, ModelSpec, seeded

__all__ = ["SMALL", "TASKS", "Adapter", "build", "example", "shrink", "specs"]

TASKS: tuple[tuple[str, str, str], ...] = (
    ("MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES", "seq2seq", "encoder-decoder"),
    ("MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES", "speech-seq2seq", "audio"),
    ("MODEL_FOR_MASKED_LM_MAPPING_NAMES", "masked-lm", "encoder"),
    ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "causal-lm", "decoder"),
    ("MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES", "image-classification", "vision"),
    ("MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES", "audio-classification", "audio"),
    ("MODEL_FOR_CTC_MAPPING_NAMES", "ctc", "audio"),
)
"""(mapping in ``transformers.models.auto.modeling_auto``, task, kind), in the order a type is claimed."""

SMALL: dict[str, int] = {
    **dict.fromkeys(("hidden_size", "d_model", "n_embd", "dim", "embedding_size", "word_embed_proj_dim"), 64),
    **dict.fromkeys(("intermediate_size", "d_ff", "n_inner", "ffn_dim", "encoder_ffn_dim", "decoder_ffn_dim",
                     "hidden_dim"), 128),
    **dict.fromkeys(("num_hidden_layers", "num_layers", "n_layer", "n_layers", "encoder_layers", "decoder_layers",
                     "num_decoder_layers", "num_encoder_layers"), 2),
    **dict.fromkeys(("num_attention_heads", "num_heads", "n_head", "n_heads", "encoder_attention_heads",
                     "decoder_attention_heads"), 4),
    "num_key_value_heads": 2, "head_dim": 16, "d_kv": 16, "d_head": 16, "kv_channels": 16, "n_groups": 1,
    "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16, "kv_lora_rank": 32, "q_lora_rank": 32,
    "rotary_dim": 8, "expand": 1, "mamba_expand": 1, "mamba_n_heads": 4, "mamba_d_head": 16,
    "vocab_size": 1024, "max_position_embeddings": 128, "n_positions": 128, "n_ctx": 128,
    "max_source_positions": 32, "max_target_positions": 64, "max_length": 64,
    **dict.fromkeys(("num_experts", "num_local_experts", "n_routed_experts"), 4),
    "num_experts_per_tok": 2, "n_shared_experts": 1, "moe_intermediate_size": 64,
    "shared_expert_intermediate_size": 64, "time_step_rank": 8,
    "image_size": 32, "patch_size": 4, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4,
}
"""Upper bounds on a config's sizes: an int field of one of these names is lowered to the value (never raised)."""

_LAYER_KEYS = ("num_hidden_layers", "num_layers", "n_layer", "n_layers")
_DROP = ("out_features", "out_indices", "stage_names")
"""Backbone stage lists that name stages past the shrunk depth: dropped, so the config recomputes them."""
_LIST_CAPS = {"conv_dim": 64, "depths": 2}
_OTHER_MODALITY = ("vision", "audio", "speech", "semantic", "acoustic", "vq", "codec", "image")
SEQ_LEN, BATCH = 16, 16


def _shrink_tokens(cfg: dict[str, Any], vocab: int) -> None:
    for key, value in cfg.items():
        if key.endswith(("_token_id", "_token_index")) and isinstance(value, int) and value >= vocab:
            cfg[key] = value % vocab
        elif key.endswith("_token_id") and isinstance(value, list):
            cfg[key] = [v % vocab if isinstance(v, int) else v for v in value]


def shrink(cfg: dict[str, Any]) -> dict[str, Any]:
    """A copy of a config's ``to_dict()`` with every size capped by :data:`SMALL` (sub-configs too), per-layer
    lists cut to the new depth, token ids kept inside the vocabulary and the cache off."""
    out: dict[str, Any] = {}
    depth = next((cfg[k] for k in _LAYER_KEYS if isinstance(cfg.get(k), int)), None)
    for key, value in cfg.items():
        if key in _DROP:
            continue
        if isinstance(value, dict) and "model_type" in value:
            out[key] = shrink(value)
        elif key == "hidden_dim" and "dim" not in cfg:  # DistilBERT's FFN width; elsewhere a derived size
            out[key] = value
        elif key in SMALL and isinstance(value, int) and not isinstance(value, bool):
            out[key] = min(value, SMALL[key])
        elif key in _LIST_CAPS and isinstance(value, list) and all(isinstance(v, int) for v in value):
            out[key] = [min(v, _LIST_CAPS[key]) for v in value]
        else:
            out[key] = value
    if depth is not None and depth > 2:
        for key, value in out.items():
            if isinstance(value, list) and len(value) == depth:
                out[key] = value[:2]
            elif isinstance(value, dict) and value and all(str(k).isdigit() for k in value):
                out[key] = {k: v for k, v in value.items() if int(k) < 2}
    if isinstance(out.get("vocab_size"), int):
        _shrink_tokens(out, out["vocab_size"])
    if "use_cache" in out:
        out["use_cache"] = False
    return out


class Adapter(nn.Module):
    """Calls ``model(**dict(zip(keys, args)))`` and returns its ``logits`` (the first output when it has none),
    classes first (batch, classes, positions) when ``classes_first``. The model itself is unchanged."""

    def __init__(self, model: nn.Module, keys: tuple[str, ...], classes_first: bool) -> None:
        super().__init__()
        self.model, self.keys, self.classes_first = model, keys, classes_first

    def forward(self, *args: torch.Tensor) -> Any:
        out = self.model(**dict(zip(self.keys, args, strict=True)))
        logits = getattr(out, "logits", None)
        logits = out[0] if logits is None else logits
        if self.classes_first and isinstance(logits, torch.Tensor) and logits.dim() == 3:
            return logits.transpose(1, 2)
        return logits


def _text_config(config: Any) -> Any:
    return getattr(config, "text_config", None) or getattr(config, "decoder", None) or config


def _features(config: Any, gen: torch.Generator) -> torch.Tensor:
    """``input_features``: (batch, mel bins, frames) for Whisper-like encoders (2 frames per source position),
    else (batch, frames, features)."""
    mels = getattr(config, "num_mel_bins", None) or getattr(config, "feature_size", None) or 80
    width = getattr(config, "input_feat_per_channel", None) or getattr(config, "feature_projection_input_dim", None)
    if width is not None:
        return torch.randn(BATCH, 64, width * getattr(config, "input_channels", 1), generator=gen)
    if hasattr(config, "max_source_positions"):
        return torch.randn(BATCH, mels, 2 * config.max_source_positions, generator=gen)
    return torch.randn(BATCH, 64, mels, generator=gen)


def example(model: nn.Module) -> tuple[torch.Tensor, ...]:
    """One batch of ``BATCH`` for an :class:`Adapter`'s keys, shaped from its model's config: token ids below the
    vocabulary (length ``SEQ_LEN``), images at the config's size, 0.5 s of 16 kHz audio, or audio features."""
    if not isinstance(model, Adapter):
        raise TypeError(f"expected an Adapter, not {type(model).__name__}")
    config = model.model.config
    gen = torch.Generator().manual_seed(SEED)
    out = []
    for key in model.keys:
        if key in ("input_ids", "decoder_input_ids"):
            vocab = getattr(_text_config(config), "vocab_size", None) or 1024
            out.append(torch.randint(0, vocab, (BATCH, SEQ_LEN), generator=gen))
        elif key == "pixel_values":
            size = getattr(config, "image_size", 32)
            side = size[-1] if isinstance(size, (list, tuple)) else size
            out.append(torch.randn(BATCH, getattr(config, "num_channels", 3), side, side, generator=gen))
        elif key == "input_values":
            out.append(torch.randn(BATCH, 8000, generator=gen))
        else:
            out.append(_features(config, gen))
    return tuple(out)


def build(model_type: str, class_name: str, seq2seq: bool, classes_first: bool) -> Callable[[], nn.Module]:
    """A seeded builder: ``transformers.<class_name>`` of ``model_type``'s shrunk default config, behind an
    :class:`Adapter` fed its ``main_input_name`` (and ``decoder_input_ids`` when ``seq2seq``)."""

    def create() -> nn.Module:
        import transformers

        config_cls = transformers.CONFIG_MAPPING[model_type]
        config = config_cls.from_dict(shrink(config_cls().to_dict()))
        model = getattr(transformers, class_name)(config)
        keys = (str(model.main_input_name), *(("decoder_input_ids",) if seq2seq else ()))
        return Adapter(model, keys, classes_first)

    return seeded(create)


def _skip(model_type: str, kind: str) -> str:
    import transformers

    if model_type in ("encoder-decoder", "speech-encoder-decoder", "vision-encoder-decoder"):
        return "a generic wrapper of two other models' configs: its parts are in the catalogue"
    subs = getattr(transformers.CONFIG_MAPPING[model_type], "sub_configs", {}) or {}
    other = sorted(s for s in subs if any(word in s for word in _OTHER_MODALITY))
    if kind in ("encoder", "decoder", "encoder-decoder") and other:
        return f"multimodal ({', '.join(other)}): text-only input would leave a tower unused"
    return ""


def _state_space(model_type: str) -> bool:
    import transformers

    fields = getattr(transformers.CONFIG_MAPPING[model_type], "__dataclass_fields__", {})
    return any(f in fields for f in ("state_size", "ssm_state_size", "mamba_d_state", "d_state"))


def specs() -> list[ModelSpec]:
    """One spec per model type of :data:`TASKS` (the first task that has it; its first class when several)."""
    from transformers.models.auto import modeling_auto

    claimed: dict[str, tuple[str, str, str]] = {}
    for mapping, task, kind in TASKS:
        for model_type, names in getattr(modeling_auto, mapping).items():
            claimed.setdefault(model_type, (names if isinstance(names, str) else names[0], task, kind))
    out = []
    for model_type, (class_name, task, kind) in sorted(claimed.items()):
        if kind == "decoder" and _state_space(model_type):
            kind = "state-space"
        seq2seq = task in ("seq2seq", "speech-seq2seq")
        classes_first = task not in ("image-classification", "audio-classification")
        out.append(ModelSpec(f"hf/{model_type}", "hf", kind, build(model_type, class_name, seq2seq, classes_first),
                             example=example, loss="ce" if classes_first else "auto", skip=_skip(model_type, kind),
                             note=f"{class_name} ({task})"))
    return out
