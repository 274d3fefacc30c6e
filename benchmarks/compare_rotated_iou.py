"""The oriented-box similarities side by side with their references: values, degenerate boxes, time.

Run in the side venv (torch + ultralytics 8.4.190, opencv if installed; never dependencies of detloss)::

    PYTHONPATH=src <side-venv>/bin/python benchmarks/compare_rotated_iou.py [--n 2000] [--skip-time]

1. Agreement (float64): ``kind="probiou"`` against ultralytics' ``utils.metrics.probiou`` (values, floor
   0 and 0.01, and gradients: max |Δgrad| / max |grad|); ``"iou"`` against the tests' Sutherland–Hodgman
   clipper (``tests/reference/rotated.py``) and OpenCV's ``cv2.rotatedRectangleIntersection``;
   ``"kld"``/``"gwd"`` against the tests' full-matrix Gaussian references. Max relative error each.
2. Degenerate boxes (float32: zero-area, zero-width, slivers, parallel slivers, identical): how many
   NaN values and gradients ultralytics' probiou gives, and detloss' four kinds.
3. Time (float32, 2 threads, medians of interleaved rounds) of forward + backward of
   ``rotated_iou_loss`` on 1e3, 1e4, 1e5 box pairs, each kind, and of ultralytics' probiou.

ultralytics is AGPL-3.0: it is only called here.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.*

import torch  # noqa: E402

import detloss  # noqa: E402
from tests.reference import rotated as ref  # noqa: E402

KINDS = ("iou", "probiou", "kld", "gwd")


def random_boxes(n: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``(n, 5)`` xywhr boxes: centres in [0, 6)², sides in [0.5, 6), angles in [−4, 4)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 5, generator=g, dtype=torch.float64)
    scale = torch.tensor([6.0, 6.0, 5.5, 5.5, 8.0], dtype=torch.float64)
    shift = torch.tensor([0.0, 0.0, 0.5, 0.5, -4.0], dtype=torch.float64)
    return (u * scale + shift).to(dtype)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() / b.abs().clamp(min=1e-12)).max())


def ultra_probiou():
    from ultralytics.utils.metrics import probiou

    return lambda a, b, floor=0.0: probiou(a, b, floor=floor).squeeze(-1)


def agreement(n: int) -> None:
    b1, b2 = random_boxes(n, 1), random_boxes(n, 2)
    print(f"## Agreement, float64, {n} random pairs (max relative error)")
    up = ultra_probiou()
    for floor in (0.0, 0.01):
        print(f"probiou vs ultralytics probiou, floor={floor}: "
              f"{rel(detloss.rotated_bbox_iou(b1, b2, 'probiou', floor=floor), up(b1, b2, floor)):.2e}")
    p1, p2 = b1.clone().requires_grad_(), b1.clone().requires_grad_()
    q1, q2 = b2.clone().requires_grad_(), b2.clone().requires_grad_()
    detloss.rotated_bbox_iou(p1, q1, "probiou", floor=0.01).sum().backward()
    up(p2, q2, 0.01).sum().backward()
    g1, g2 = torch.cat((p1.grad, q1.grad)), torch.cat((p2.grad, q2.grad))
    print(f"probiou gradient vs ultralytics (max |Δg| / max |g|): "
          f"{float((g1 - g2).abs().max() / g2.abs().max()):.2e}")
    rows1, rows2 = b1.tolist(), b2.tolist()
    iou = detloss.rotated_bbox_iou(b1, b2, "iou")
    pairs = list(zip(rows1, rows2, strict=True))
    clip = torch.tensor([ref.polygon_iou(p, q, 1e-7) for p, q in pairs], dtype=b1.dtype)
    overlap = clip > 0
    print(f"iou vs Sutherland-Hodgman clipper: {rel(iou[overlap], clip[overlap]):.2e} on the "
          f"{int(overlap.sum())} overlapping pairs, max |Δ| {float((iou - clip).abs().max()):.1e} on all")
    try:
        import cv2
        import numpy as np
    except ImportError:
        print("iou vs cv2.rotatedRectangleIntersection: opencv not installed")
    else:
        def cv_iou(p: list[float], q: list[float]) -> float:
            r1 = ((p[0], p[1]), (p[2], p[3]), math.degrees(p[4]))
            r2 = ((q[0], q[1]), (q[2], q[3]), math.degrees(q[4]))
            kind, pts = cv2.rotatedRectangleIntersection(r1, r2)
            inter = 0.0 if pts is None else float(cv2.contourArea(cv2.convexHull(pts.astype(np.float32))))
            return inter / (p[2] * p[3] + q[2] * q[3] - inter + 1e-7)

        cv = torch.tensor([cv_iou(p, q) for p, q in zip(rows1, rows2, strict=True)], dtype=b1.dtype)
        both = overlap & (cv > 1e-3)

        def errs(x: torch.Tensor) -> str:
            e = (x[both] - cv[both]).abs() / cv[both]
            return f"median {float(e.median()):.1e}, max {float(e.max()):.1e}"

        # OpenCV computes in float32 and merges vertices closer than a fixed threshold: its own error
        print(f"iou vs cv2.rotatedRectangleIntersection on {int(both.sum())} pairs with IoU > 1e-3: "
              f"{errs(iou)} (the clipper vs OpenCV: {errs(clip)})")
    for kind, f in (("kld", ref.kld_similarity), ("gwd", ref.gwd_similarity)):
        want = torch.tensor([f(p, q) for p, q in zip(rows1, rows2, strict=True)], dtype=b1.dtype)
        print(f"{kind} vs the papers' full-matrix Gaussians (mmrotate's post-processing): "
              f"{rel(detloss.rotated_bbox_iou(b1, b2, kind), want):.2e}")


DEGENERATE = {
    "identical": ([1.0, 2.0, 3.0, 1.0, 0.3], [1.0, 2.0, 3.0, 1.0, 0.3]),
    "zero area": ([0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]),
    "zero area, apart": ([0.0, 0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0]),
    "zero width": ([0.0, 0.0, 0.0, 2.0, 0.4], [0.1, 0.0, 1.0, 1.0, 0.0]),
    "sliver": ([0.0, 0.0, 1e4, 1e-4, 0.7], [1.0, 0.5, 1e4, 1e-4, 0.7 + 1e-6]),
    "parallel slivers": ([0.0, 0.0, 50.0, 0.0, 0.3], [0.0, 1.0, 50.0, 0.0, 0.3]),
}


def degenerate() -> None:
    print("\n## Degenerate boxes, float32: NaN in (value, gradient)")
    up = ultra_probiou()
    fns = {"ultralytics probiou": lambda a, b: up(a, b)}
    fns.update({f"detloss {k}": (lambda a, b, k=k: detloss.rotated_bbox_iou(a, b, k)) for k in KINDS})
    print("| case | " + " | ".join(fns) + " |")
    print("|---|" + "---|" * len(fns))
    for case, (p, q) in DEGENERATE.items():
        cells = []
        for fn in fns.values():
            a = torch.tensor([p], requires_grad=True)
            b = torch.tensor([q], requires_grad=True)
            v = fn(a, b)
            v.sum().backward()
            bad_v = bool(torch.isnan(v).any())
            bad_g = bool(torch.isnan(a.grad).any() or torch.isnan(b.grad).any())
            flags = ("NaN " if bad_v else "") + ("NaN-grad" if bad_g else "")
            cells.append(f"{float(v[0].detach()):.4g} {flags}".strip())
        print(f"| {case} | " + " | ".join(cells) + " |")


def timing(rounds: int) -> None:
    torch.set_num_threads(2)
    print("\n## Time, float32, 2 threads: forward + backward, median ms")
    up = ultra_probiou()
    sizes = (1_000, 10_000, 100_000)
    fns = {f"detloss {k}": (lambda a, b, k=k: detloss.rotated_iou_loss(a, b, k, validate=False))
           for k in KINDS}
    fns["ultralytics probiou"] = lambda a, b: (1 - up(a, b)).mean()
    print("| n | " + " | ".join(fns) + " |")
    print("|---|" + "---|" * len(fns))
    for n in sizes:
        a0, b0 = random_boxes(n, 3, torch.float32), random_boxes(n, 4, torch.float32)
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(rounds):
            for name, fn in fns.items():
                a = a0.clone().requires_grad_()
                t0 = time.perf_counter()
                fn(a, b0).backward()
                times[name].append(1e3 * (time.perf_counter() - t0))
        print(f"| {n:.0e} | " + " | ".join(f"{statistics.median(v[1:]):.2f}" for v in times.values()) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="random pairs for the agreement")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--skip-time", action="store_true")
    args = ap.parse_args()
    random.seed(0)
    agreement(args.n)
    degenerate()
    if not args.skip_time:
        timing(args.rounds)


if __name__ == "__main__":
    main()
