"""The width trade-off of the default SegNet: forward time of a 512 x 512 x 300 CT's slices per width.

    python benchmarks/bench_width.py [--widths 8 12 16 24 32] [--repeat 3]

For each width, a SegNet (BN folded, channels-last, inference mode) runs the 38 batches of
8 x 3 x 192 x 192 that a 512 x 512 x 300 CT at 0.75 mm becomes at the model's 2 mm. Printed: parameters,
seconds (best of ``--repeat``, the widths taking turns), and the ratio to width 16, the shipped
default. The performance issue's targets are ratios to the model's own forward pass, so a wider
default is slower in absolute terms only: this table is what a width costs a user per scan.
"""

from __future__ import annotations

import argparse
import time

import torch

from medseg.inference import _fold_batch_norms
from medseg.models import create_model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[8, 12, 16, 24, 32])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batches", type=int, default=38)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    x = torch.randn(8, 3, 192, 192).contiguous(memory_format=torch.channels_last)
    nets = {}
    for w in args.widths:
        net = create_model("segnet", in_channels=3, num_classes=6, width=w).eval()
        nets[w] = _fold_batch_norms(net).to(memory_format=torch.channels_last)
    best = {w: float("inf") for w in args.widths}
    with torch.inference_mode():
        for net in nets.values():
            net(x)  # kernels built
        for _ in range(args.repeat):
            for w, net in nets.items():
                t0 = time.perf_counter()
                for _ in range(args.batches):
                    net(x)
                best[w] = min(best[w], time.perf_counter() - t0)
    ref = best.get(16, next(iter(best.values())))
    print(f"{'width':>5} {'params':>10} {'seconds':>8} {'x width 16':>10}   ({torch.get_num_threads()} threads)")
    for w in args.widths:
        params = sum(p.numel() for p in nets[w].parameters())
        print(f"{w:>5} {params:>10,} {best[w]:>8.2f} {best[w] / ref:>10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
