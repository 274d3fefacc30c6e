"""The default path (no ``set_compile``, validation on) against its peers, forward + backward.

Run in the side venv (torchvision): ``PYTHONPATH=src <side-venv>/bin/python benchmarks/default_path.py``.
Prints medians (interleaved rounds, one process) and the ratio peer time / detloss time (> 1: detloss
faster). Peers: ``torchvision.ops`` losses, an ultralytics-style ``bbox_iou`` (written here from its
documented behaviour: eps on h and on the union, two-corner hull) and the naive formula of
``tests/reference/naive.py``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import torch
from torch.utils import benchmark

import detloss

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.reference
from tests.reference.naive import naive_focal_loss, naive_iou_loss  # noqa: E402

try:
    from torchvision import ops
except Exception:  # noqa: BLE001 - optional peer
    ops = None


def ultralytics_style_iou(b1, b2, kind, eps=1e-7):
    """An ultralytics-style bbox_iou (xyxy), mean of 1 − value (GIoU or CIoU)."""
    x1, y1, x2, y2 = b1.chunk(4, -1)
    u1, v1, u2, v2 = b2.chunk(4, -1)
    w1, h1 = x2 - x1, (y2 - y1).clamp(eps)
    w2, h2 = u2 - u1, (v2 - v1).clamp(eps)
    inter = (x2.minimum(u2) - x1.maximum(u1)).clamp(0) * (y2.minimum(v2) - y1.maximum(v1)).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = x2.maximum(u2) - x1.minimum(u1)
    ch = y2.maximum(v2) - y1.minimum(v1)
    if kind == "giou":
        c_area = cw * ch + eps
        val = iou - (c_area - union) / c_area
    else:
        c2 = cw.pow(2) + ch.pow(2) + eps
        rho2 = ((u1 + u2 - x1 - x2).pow(2) + (v1 + v2 - y1 - y2).pow(2)) / 4
        v = (4 / math.pi**2) * ((u2 - u1).div(h2).atan() - w1.div(h1).atan()).pow(2)
        with torch.no_grad():
            alpha = v / (v - iou + (1 + eps))
        val = iou - (rho2 / c2 + v * alpha)
    return (1.0 - val).mean()


def boxes(n, gen):
    xy = torch.rand(n, 2, generator=gen) * 600
    wh = torch.rand(n, 2, generator=gen) * 60 + 1
    target = torch.cat([xy, xy + wh], -1)
    pred = target + torch.randn(n, 4, generator=gen) * 8
    pred = torch.cat([pred[:, :2], torch.maximum(pred[:, 2:], pred[:, :2] + 0.5)], -1)
    return pred.requires_grad_(), target


def medians(fns, rounds):
    threads = torch.get_num_threads()
    timers = {k: benchmark.Timer("f()", globals={"f": f}, num_threads=threads) for k, f in fns.items()}
    number = {k: max(1, int(0.01 / max(t.timeit(1).median, 1e-7))) for k, t in timers.items()}
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, t in timers.items():
            times[k].append(t.timeit(number[k]).median)
    return {k: statistics.median(v) for k, v in times.items()}


def step(loss_fn, pred, *args):
    def run():
        torch.autograd.grad(loss_fn(pred, *args), pred)
    return run


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", default="1e3,1e4,1e5,1e6")
    parser.add_argument("--focal-sizes", default="1e3,1e4,1e5")
    parser.add_argument("--kinds", default="giou,ciou,focal")
    a = parser.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, detloss from {detloss.__file__}, {a.threads} threads")
    print("| case | N | detloss | torchvision | ultralytics-style | naive | tv/ours | ultra/ours "
          "| naive/ours |")
    print("|---|---|---|---|---|---|---|---|---|")
    tv_name = {"giou": "generalized_box_iou_loss", "ciou": "complete_box_iou_loss"}
    for kind in a.kinds.split(","):
        sizes = a.focal_sizes if kind == "focal" else a.sizes
        for n in (int(float(s)) for s in sizes.split(",")):
            gen = torch.Generator().manual_seed(0)
            if kind == "focal":
                x = (torch.randn(n, 80, generator=gen) * 3).requires_grad_()
                t = (torch.rand(n, 80, generator=gen) < 0.02).float()
                fns = {"ours": step(lambda p, t: detloss.sigmoid_focal_loss(p, t), x, t),
                       "naive": step(naive_focal_loss, x, t)}
                if ops is not None:
                    fns["tv"] = step(lambda p, t: ops.sigmoid_focal_loss(p, t, reduction="mean"), x, t)
            else:
                p, t = boxes(n, gen)
                fns = {"ours": step(lambda p, t, k=kind: detloss.iou_loss(p, t, k), p, t),
                       "naive": step(lambda p, t, k=kind: naive_iou_loss(p, t, k), p, t),
                       "ultra": step(lambda p, t, k=kind: ultralytics_style_iou(p, t, k), p, t)}
                if ops is not None:
                    tv = getattr(ops, tv_name[kind])
                    fns["tv"] = step(lambda p, t, tv=tv: tv(p, t, reduction="mean"), p, t)
            for f in fns.values():
                f()
            m = medians(fns, a.rounds)
            cells = [f"{m[k] * 1e3:.3g} ms" if k in m else "–" for k in ("ours", "tv", "ultra", "naive")]
            ratios = [f"{m[k] / m['ours']:.2f}×" if k in m else "–" for k in ("tv", "ultra", "naive")]
            label = f"({n:.0e}, 80)" if kind == "focal" else f"{n:.0e}"
            name = "sigmoid_focal_loss" if kind == "focal" else f"iou_loss[{kind}]"
            print(f"| {name} | {label} | " + " | ".join(cells + ratios) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
