"""Render the first page of a report's PDF to a small PNG, for the README.

    python benchmarks/screenshot.py reports/cnn-<time>/report.pdf docs/report-page1.png

Uses poppler's ``pdftoppm`` (Debian's poppler-utils) for the page and Pillow to reduce it to a palette
PNG; fails when the result is over ``--max-kb`` so the repository stays small. Prints the file, its size
and its pixel size.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

DPI = 110
"""Pixels per inch of the rendering: an A4 page becomes about 910 x 1290 pixels, readable on screen."""
COLOURS = 64
"""Palette size of the PNG: text and flat plot colours need few, and the file stays small."""


def render_first_page(pdf: Path, png: Path, dpi: int = DPI, colours: int = COLOURS) -> tuple[int, int]:
    """Write page 1 of ``pdf`` to ``png`` as a palette PNG; return its (width, height) in pixels."""
    if shutil.which("pdftoppm") is None:
        raise SystemExit("pdftoppm is not installed (apt-get install poppler-utils)")
    with tempfile.TemporaryDirectory() as tmp:
        stem = Path(tmp) / "page"
        subprocess.run(["pdftoppm", "-png", "-r", str(dpi), "-f", "1", "-l", "1", "-singlefile", str(pdf), str(stem)],
                       check=True)
        with Image.open(stem.with_suffix(".png")) as page:
            small = page.convert("RGB").quantize(colors=colours, method=Image.Quantize.MEDIANCUT,
                                                 dither=Image.Dither.NONE)
            png.parent.mkdir(parents=True, exist_ok=True)
            small.save(png, optimize=True)
            return small.size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pdf", type=Path, help="a report.pdf written by initdiag")
    parser.add_argument("png", type=Path, nargs="?", default=Path("docs/report-page1.png"),
                        help="where to write the PNG (default docs/report-page1.png)")
    parser.add_argument("--dpi", type=int, default=DPI, help=f"rendering resolution (default {DPI})")
    parser.add_argument("--max-kb", type=int, default=200, help="fail when the PNG is larger (default 200)")
    args = parser.parse_args(argv)
    width, height = render_first_page(args.pdf, args.png, args.dpi)
    kb = args.png.stat().st_size / 1024
    print(f"{args.png}: {kb:.0f} KB, {width} x {height} px")
    if kb > args.max_kb:
        print(f"{args.png} is over {args.max_kb} KB: lower --dpi", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
