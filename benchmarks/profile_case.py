"""Where the time of one benchmark case goes: ``python benchmarks/profile_case.py giou 1e6 [--eager]``.

Prints torch.profiler's table (self CPU time per op / compiled graph) for repeated forward+backward of
``iou_loss`` (kinds) or ``sigmoid_focal_loss`` (``focal``, N rows of 80 logits) next to the bandwidth
floor of the same bytes. Used for the "misses" section of benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import profile
from torch.utils import benchmark

import detloss

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or imported: bench.py
from bench import box_inputs, focal_inputs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", help="iou|giou|diou|ciou|eiou|siou|focal")
    parser.add_argument("n", type=lambda v: int(float(v)))
    parser.add_argument("--eager", action="store_true", help="profile the eager path instead")
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(2)
    detloss.set_compile(not args.eager)
    gen = torch.Generator().manual_seed(0)
    if args.kind == "focal":
        x = focal_inputs(args.n, gen)
        step = lambda: detloss.sigmoid_focal_loss(x["pred"], x["target"], validate=False)  # noqa: E731
    else:
        x = box_inputs(args.n, gen)
        step = lambda: detloss.iou_loss(x["pred"], x["target"], args.kind, validate=False)  # noqa: E731

    def fn() -> None:
        torch.autograd.grad(step(), x["pred"])

    for _ in range(3):
        fn()
    a, b = x["pred"].detach().clone(), x["target"]
    floor = benchmark.Timer("a + b", globals={"a": a, "b": b}).blocked_autorange(min_run_time=0.5).median
    total = benchmark.Timer("fn()", globals={"fn": fn}).blocked_autorange(min_run_time=0.5).median
    print(f"{args.kind} N={args.n}: {1e3 * total:.3g} ms per forward+backward, floor {1e3 * floor:.3g} ms")
    with profile() as prof:
        for _ in range(args.iters):
            fn()
    print(f"(profiler totals over {args.iters} steps)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=48))


if __name__ == "__main__":
    main()
