"""Page 1 of an audit's PDF, for the README: a 30-layer ReLU MLP (784-256x28-10) at PyTorch's default init, the
classic vanishing case, audited on MNIST-shaped normal inputs and rendered to a small PNG.

    python benchmarks/audit_page1.py docs/audit-page1.png
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

import initdiag

sys.path.insert(0, str(Path(__file__).parent))
from screenshot import render_first_page


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("png", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Flatten(), nn.Linear(784, 256), nn.ReLU()]
    for _ in range(28):
        layers += [nn.Linear(256, 256), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(256, 10))
    result = initdiag.audit(model, input_shape=(1, 28, 28))
    with tempfile.TemporaryDirectory() as tmp:
        pdf = result.write(tmp, formats=("pdf",))["pdf"]
        width, height = render_first_page(pdf, args.png)
    print(f"{args.png}: {args.png.stat().st_size // 1024} KB, {width} x {height} pixels")


if __name__ == "__main__":
    main()
