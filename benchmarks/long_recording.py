"""A long recording stays bounded: a 12-layer GPT-2 trained in the user's own loop with a TrainingSession (the
callbacks' engine) at every=1 for ``--steps`` steps, its memory and rows sampled as it goes, then the report.

With the default budget (``--max-steps 2048``: the first 256 recorded steps, then thinned evenly) the rows, the
process's resident memory and the report's size stop growing once the budget is reached; ``--max-steps 0``
keeps every step, for the side-by-side figure; ``--stream`` writes every recorded step to Parquet parts as
it goes (``stream_to``) and the report reads the bounded view back. The GPT-2 is narrow (``--width 32``) so 20k
steps run on a CPU in minutes: the rows per step depend on the layer count, not the width.

    python benchmarks/long_recording.py --steps 20000
    python benchmarks/long_recording.py --steps 20000 --max-steps 0
    python benchmarks/long_recording.py --steps 20000 --stream
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _measure import proc_status_bytes
from torch.nn import functional as F


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--max-steps", type=int, default=2048, help="the session's budget; 0: keep every step")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--stream", action="store_true", help="stream every step to Parquet (stream_to)")
    args = parser.parse_args()
    import transformers

    from initdiag.integrations.session import TrainingSession

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=12, n_embd=args.width, n_head=4, vocab_size=256, n_positions=32)
    model = transformers.GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (64, 4, 17), generator=g)
    with tempfile.TemporaryDirectory() as tmp:
        session = TrainingSession(Path(tmp) / "report", every=1, formats=("html", "json", "csv"), label="loop",
                                  max_steps=args.max_steps or None,
                                  stream_to=Path(tmp) / "series" if args.stream else None)
        session.begin(model, data[0][:, :-1])
        base, start = proc_status_bytes("VmRSS"), time.perf_counter()
        marks = {args.steps // 4, args.steps // 2, 3 * args.steps // 4, args.steps}
        for step in range(1, args.steps + 1):
            batch = data[step % len(data)]
            logits = model(batch[:, :-1]).logits
            loss = F.cross_entropy(logits.reshape(-1, 256), batch[:, 1:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            session.loss(loss)
            if step in marks:
                assert session.recorder is not None
                rows, grown = session.recorder._collector.nbytes(), proc_status_bytes("VmRSS") - base
                print(f"step {step}: +{grown / 2**20:,.0f} MiB resident, recorded rows "
                      f"{rows / 2**20:,.1f} MiB, {time.perf_counter() - start:.0f} s", flush=True)
        t = time.perf_counter()
        written = session.finish(model)
        sizes = ", ".join(f"{p.name} {p.stat().st_size / 2**20:.1f} MiB" for p in written.values())
        print(f"report written in {time.perf_counter() - t:.1f} s: {sizes}")
        if args.stream:
            parts = list((Path(tmp) / "series").glob("part-*.parquet"))
            print(f"streamed: {len(parts)} parts, {sum(p.stat().st_size for p in parts) / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
