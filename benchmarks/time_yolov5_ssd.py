"""Time one forward + backward of YOLOv5Loss and SSDLoss at their standard sizes (2 threads, median).

YOLOv5: B = 16, 640×640, 80 classes, 20 boxes per image. SSD300: 8732 priors, B = 32, 21 classes
(20 + background), 8 boxes per image. Run: ``PYTHONPATH=src python benchmarks/time_yolov5_ssd.py [threads]``.
"""

from __future__ import annotations

import itertools
import math
import statistics
import sys
import time

import torch
from torch.utils import benchmark

from detloss.criteria import SSDLoss, YOLOv5Loss


def ssd300_priors() -> torch.Tensor:
    """The 8732 SSD300 priors (cxcywh in [0, 1], ssd.pytorch's PriorBox layout)."""
    fmaps, steps = [38, 19, 10, 5, 3, 1], [8, 16, 32, 64, 100, 300]
    mins, maxs = [30, 60, 111, 162, 213, 264], [60, 111, 162, 213, 264, 315]
    ratios = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
    out = []
    for k, f in enumerate(fmaps):
        for i, j in itertools.product(range(f), repeat=2):
            fk = 300 / steps[k]
            cx, cy, s = (j + 0.5) / fk, (i + 0.5) / fk, mins[k] / 300
            sp = math.sqrt(s * maxs[k] / 300)
            out += [[cx, cy, s, s], [cx, cy, sp, sp]]
            for r in ratios[k]:
                q = math.sqrt(r)
                out += [[cx, cy, s * q, s / q], [cx, cy, s / q, s * q]]
    return torch.tensor(out)


def random_targets(bs: int, n: int, size: float, nc: int, gen: torch.Generator) -> list[dict]:
    out = []
    for _ in range(bs):
        c = torch.rand(n, 2, generator=gen) * size
        wh = (torch.rand(n, 2, generator=gen) * 0.4 + 0.02) * size
        out.append(
            {
                "boxes": torch.cat((c - wh / 2, c + wh / 2), 1),
                "labels": torch.randint(0, nc, (n,), generator=gen),
            }
        )
    return out


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
    gen = torch.Generator().manual_seed(0)

    nc, bs = 80, 16
    crit5 = YOLOv5Loss(nc)
    preds5 = [
        torch.randn(bs, 3 * (5 + nc), 640 // s, 640 // s, generator=gen).requires_grad_() for s in (8, 16, 32)
    ]
    tg5 = random_targets(bs, 20, 640.0, nc, gen)

    def step5() -> None:
        crit5(preds5, tg5).total.backward()

    priors = ssd300_priors()
    assert priors.shape == (8732, 4)
    crit_ssd = SSDLoss(20, priors)
    loc = torch.randn(32, 8732, 4, generator=gen).requires_grad_()
    conf = torch.randn(32, 8732, 21, generator=gen).requires_grad_()
    tg_ssd = random_targets(32, 8, 1.0, 20, gen)

    def step_ssd() -> None:
        crit_ssd((loc, conf), tg_ssd).total.backward()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'case':<42}{'wall median ms':>16}{'CPU median ms':>15}")
    for name, fn in (
        ("YOLOv5 B=16 640x640 C=80 20 boxes/img", step5),
        ("SSD300 8732 priors B=32 C=21 8 boxes/img", step_ssd),
    ):
        fn()  # warm-up
        t = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
        wall = t.blocked_autorange(min_run_time=3).median
        # CPU time of the process (all threads): less sensitive to other jobs on a shared machine
        cpu = []
        for _ in range(7):
            c0 = time.process_time()
            fn()
            cpu.append(time.process_time() - c0)
        print(f"{name:<42}{wall * 1e3:>16.1f}{statistics.median(cpu) * 1e3:>15.1f}")


if __name__ == "__main__":
    main()
