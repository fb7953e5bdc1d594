"""Peak memory of ``initdiag.audit(model, ...)`` against the same plain forward+backward passes, side by side.

Each side runs in its own fresh process (``--side``, spawned by the parent) on the same model, built from the
same seed: the peak resident memory (Linux ``VmHWM``, reset after the model is built by writing 5 to
``/proc/self/clear_refs``) minus the resident memory of the built model, so both sides count only what their
work adds. The audit's modules are imported on both sides before the model is built (their code, pandas and
scipy take a fixed ~120 MiB once per process, whatever the model). Plain: ``batches`` forward+backward passes
of cross-entropy against random labels on the model itself (what a user's first training steps cost). Audit:
``initdiag.audit(model, input_shape=..., batches=..., batch_size=...)``, its own generated batches of the
same shape and count. The peak moves by ~10% between fresh processes (the allocator), so ``--repeats``
pairs run alternated: prints the median peaks and times, the median ratio and the range over the pairs.

    python benchmarks/audit_memory.py                       # resnet50 (3x128x128, 4 x 8) and gpt2 (12 layers)
    python benchmarks/audit_memory.py --models llama1b      # a ~1 B-parameter decoder from a Llama config
    python benchmarks/audit_memory.py --models vit_b_16     # torchvision's ViT-B/16, 4 x 4 x 3 x 224 x 224
    python benchmarks/audit_memory.py --models llama1b --batches 4 --batch-size 16   # the audit's defaults
    python benchmarks/audit_memory.py --models resnet50 --batch-size 16 --size 224  # defaults, its own input

``--batches`` / ``--batch-size`` replace a model's own count and size of batches (the same sample shape);
``--size`` an image model's height and width.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _measure import proc_status_bytes
from torch.nn import functional as F

MODELS = ("resnet50", "gpt2", "llama1b", "vit_b_16")


def build(name: str) -> tuple[torch.nn.Module, list[torch.Tensor], int]:
    """The model, its batches and its class count."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    if name == "resnet50":
        import torchvision

        return torchvision.models.resnet50(weights=None), [torch.randn(8, 3, 128, 128, generator=g)
                                                            for _ in range(4)], 1000
    if name == "vit_b_16":
        import torchvision

        return torchvision.models.vit_b_16(weights=None), [torch.randn(4, 3, 224, 224, generator=g)
                                                           for _ in range(4)], 1000
    import transformers

    if name == "gpt2":
        config = transformers.GPT2Config(n_layer=12)
        model: Any = transformers.GPT2LMHeadModel(config)
        vocab = config.vocab_size
        return model, [torch.randint(0, vocab, (4, 128), generator=g) for _ in range(4)], vocab
    if name == "llama1b":
        llama = transformers.LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16,
                                         num_attention_heads=32, num_key_value_heads=8, vocab_size=32000)
        model = transformers.LlamaForCausalLM(llama)
        return model, [torch.randint(0, llama.vocab_size, (2, 32), generator=g) for _ in range(2)], \
            llama.vocab_size
    raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


def resized(batches: list[torch.Tensor], count: int | None, size: int | None, classes: int,
            side: int | None = None) -> list[torch.Tensor]:
    """``batches`` again as ``count`` batches of ``size`` samples of the same shape (images ``side`` x ``side``
    when given) and kind (seeded), when any is given."""
    if count is None and size is None and side is None:
        return batches
    x, g = batches[0], torch.Generator().manual_seed(2)
    if side is not None and (not x.is_floating_point() or x.dim() != 4):
        raise SystemExit("--size applies to image models (batches of N x C x H x W)")
    sample = (x.shape[1], side, side) if side is not None else x.shape[1:]
    shape = (size or len(x), *sample)
    return [torch.randn(shape, generator=g) if x.is_floating_point() else torch.randint(0, classes, shape, generator=g)
            for _ in range(count or len(batches))]


def _logits(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out


def side(name: str, which: str, count: int | None = None, size: int | None = None,
         image: int | None = None) -> dict[str, float]:
    import importlib

    import initdiag

    for module in ("initdiag.audit.run", "initdiag.checks.analysis"):  # both sides: the audit's code loaded
        importlib.import_module(module)

    model, batches, classes = build(name)
    batches = resized(batches, count, size, classes, image)
    base = proc_status_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    start = time.perf_counter()
    if which == "plain":
        model.train()
        g = torch.Generator().manual_seed(1)
        for x in batches:
            logits = _logits(model(x))
            labels = torch.randint(0, classes, logits.shape[:-1], generator=g)
            F.cross_entropy(logits.reshape(-1, classes), labels.reshape(-1)).backward()
            model.zero_grad(set_to_none=True)
    else:
        x = batches[0]  # generated batches of the same shape and count as the plain side's
        tokens = not x.is_floating_point()
        initdiag.audit(model, input_shape=tuple(x.shape[1:]), batches=len(batches), batch_size=len(x),
                       input_dtype="long" if tokens else "float", vocab=classes if tokens else None)
    seconds = time.perf_counter() - start
    return {"peak": float(proc_status_bytes("VmHWM") - base), "seconds": seconds,
            "params": float(sum(p.numel() for p in model.parameters())), "batches": float(len(batches)),
            "samples": float(len(batches[0])), "values": float(batches[0][0].numel())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,gpt2")
    parser.add_argument("--repeats", type=int, default=3, help="pairs of fresh processes (plain, audit) per model")
    parser.add_argument("--batches", type=int, help="batches per side (default: the model's own)")
    parser.add_argument("--batch-size", type=int, help="samples per batch (default: the model's own)")
    parser.add_argument("--size", type=int, help="an image model's input height and width (default: its own)")
    parser.add_argument("--side", choices=("plain", "audit"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(side(args.model, args.side, args.batches, args.batch_size, args.size)))
        return
    for name in args.models.split(","):
        got: dict[str, list[dict[str, float]]] = {"plain": [], "audit": []}
        for _ in range(args.repeats):  # alternated, each in a fresh process
            for which in ("plain", "audit"):
                sizes = [*(["--batches", str(args.batches)] if args.batches else []),
                         *(["--batch-size", str(args.batch_size)] if args.batch_size else []),
                         *(["--size", str(args.size)] if args.size else [])]
                done = subprocess.run([sys.executable, __file__, "--side", which, "--model", name, *sizes],
                                      capture_output=True, text=True, check=True)
                got[which].append(json.loads(done.stdout.strip().splitlines()[-1]))
        peak = {k: np.array([r["peak"] for r in v]) / 2**20 for k, v in got.items()}
        secs = {k: np.array([r["seconds"] for r in v]) for k, v in got.items()}
        ratios = peak["audit"] / peak["plain"]
        first = got["plain"][0]
        print(f"{name} ({first['params'] / 1e6:.0f} M parameters; {first['batches']:.0f} batches of "
              f"{first['samples']:.0f} x {first['values']:.0f} values), {args.repeats} pairs of fresh processes: "
              f"plain +{np.median(peak['plain']):,.0f} MiB in {np.median(secs['plain']):.1f} s, audit "
              f"+{np.median(peak['audit']):,.0f} MiB in {np.median(secs['audit']):.1f} s (medians): memory "
              f"{np.median(ratios):.2f}x (pairs {ratios.min():.2f}-{ratios.max():.2f}), time "
              f"{np.median(secs['audit'] / secs['plain']):.2f}x")


if __name__ == "__main__":
    main()
