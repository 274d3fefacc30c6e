"""The compiled path (``detloss.set_compile(True)``) against the naive eager formula, fwd+bwd.

``PYTHONPATH=src python benchmarks/compiled_path.py [--kinds giou,ciou,focal] [--rounds 15]``

Prints medians (interleaved rounds in one process: each round times every implementation once, so
load from other processes hits them alike) and the ratio naive / compiled (> 1: compiled faster).
The first call of each compiled kind (a cold compile, or inductor's disk cache) is reported apart.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils import benchmark

import detloss

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.reference
from tests.reference.naive import naive_focal_loss, naive_iou_loss  # noqa: E402


def boxes(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions overlapping their targets (as ``benchmarks/bench.py``): ``(n, 4)`` each."""
    xy = torch.rand(n, 2, generator=gen) * 600
    wh = torch.rand(n, 2, generator=gen) * 60 + 1
    target = torch.cat([xy, xy + wh], -1)
    pred = target + torch.randn(n, 4, generator=gen) * 8
    pred = torch.cat([pred[:, :2], torch.maximum(pred[:, 2:], pred[:, :2] + 0.5)], -1)
    return pred.requires_grad_(), target


def step(loss_fn, compiled: bool, pred: torch.Tensor, target: torch.Tensor):
    def run() -> None:
        detloss.set_compile(compiled)  # interleaved: each implementation sets its own path
        torch.autograd.grad(loss_fn(pred, target), pred)

    return run


def medians(fns: dict, rounds: int) -> dict[str, float]:
    """Median seconds per call, interleaved rounds of ~10 ms blocks."""
    threads = torch.get_num_threads()
    timers = {k: benchmark.Timer("f()", globals={"f": f}, num_threads=threads) for k, f in fns.items()}
    number = {k: max(1, int(0.01 / max(t.timeit(1).median, 1e-7))) for k, t in timers.items()}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, t in timers.items():
            times[k].append(t.timeit(number[k]).median)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kinds", default="giou,ciou,focal")
    parser.add_argument("--sizes", default="1e6", help="box counts of the IoU kinds")
    parser.add_argument("--focal-sizes", default="1e4,1e5", help="rows of the (N, 80) focal logits")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    a = parser.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, detloss from {detloss.__file__}, {a.threads} threads, validate=False")
    print("| case | N | compiled | naive | naive / compiled | first call |")
    print("|---|---|---|---|---|---|")
    for kind in a.kinds.split(","):
        focal = kind == "focal"
        for n in (int(float(s)) for s in (a.focal_sizes if focal else a.sizes).split(",")):
            gen = torch.Generator().manual_seed(0)
            if focal:
                x = (torch.randn(n, 80, generator=gen) * 3).requires_grad_()
                inputs = (x, (torch.rand(n, 80, generator=gen) < 0.02).float())
                ours = lambda p, t: detloss.sigmoid_focal_loss(p, t, validate=False)  # noqa: E731
                naive = naive_focal_loss
            else:
                inputs = boxes(n, gen)
                ours = lambda p, t, k=kind: detloss.iou_loss(p, t, k, validate=False)  # noqa: E731
                naive = lambda p, t, k=kind: naive_iou_loss(p, t, k)  # noqa: E731
            fns = {"compiled": step(ours, True, *inputs), "naive": step(naive, False, *inputs)}
            start = time.perf_counter()
            fns["compiled"]()
            first = time.perf_counter() - start
            fns["naive"]()
            m = medians(fns, a.rounds)
            label = f"({n:.0e}, 80)" if focal else f"{n:.0e}"
            name = "sigmoid_focal_loss" if focal else f"iou_loss[{kind}]"
            print(
                f"| {name} | {label} | {m['compiled'] * 1e3:.3g} ms | {m['naive'] * 1e3:.3g} ms "
                f"| {m['naive'] / m['compiled']:.2f}× | {first:.1f} s |",
                flush=True,
            )
    detloss.set_compile(False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
