"""Criteria against naive per-image / per-box loop ports of the originals: forward + backward.

    PYTHONPATH=src python benchmarks/bench_criteria.py [--repeats 7] [--cases yolov3-640,ssd300]

The naive implementations are the independent references of the test suite
(``tests/criteria/test_yolov3.py``, ``test_yolov4.py``, ``test_yolov5.py``, ``test_ssd.py``), imported
from the repository's ``tests`` folder: they are loop ports of tensorflow-yolov3, yolov4-tiny-tf2,
ultralytics/yolov5 ``ComputeLoss`` and SSD.TensorFlow, written without detloss. That is why this is a
standalone script and not a ``detloss.bench.register_case`` case: the installed package must not import
``tests/``.

Each case times ``torch.autograd.grad(loss, preds)`` (forward + backward, float32 heads, 2 threads)
with ``time.perf_counter`` in interleaved rounds (every round runs each implementation once, so load
from other processes on a shared machine hits all alike); medians are reported. Columns:

- ``ours``: the criterion as constructed by default (``validate=True``); ``ours nv``: ``validate=False``;
- ``pad``: :func:`detloss.assign.pad_targets` alone with ``validate=True`` / ``False`` (the target
  padding and checks every criterion call starts with);
- ``naive``: the loop port (a port slower than ``--slow`` seconds is timed once, by its first call,
  marked "1 run"); ``ratio`` = naive / ours (validated);
- ``Δloss``, ``Δgrad``: max relative difference of the total loss, and max |Δgrad| / max |grad| over
  all heads, between ours and the loop port on the benchmark input.

The YOLOv3/v4 ports build their label arrays in NumPy float64, so their loss runs in float64 whatever
the heads' dtype (as the ports are written); the YOLOv5 and SSD ports run in the heads' float32.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the loop ports live in tests/criteria (the package never imports them)

from detloss.assign import pad_targets  # noqa: E402
from detloss.criteria import YOLOV5_ANCHORS, SSDLoss, YOLOv3Loss, YOLOv4Loss, YOLOv5Loss  # noqa: E402
from tests.criteria import test_ssd, test_yolov3, test_yolov4, test_yolov5  # noqa: E402

Targets = list[dict[str, Tensor]]


def yolo_targets(gen: torch.Generator, b: int, size: int, n: int, c: int) -> Targets:
    """``n`` boxes per image, xyxy pixels inside the image, sides log-uniform in [4, size / 2]."""
    out = []
    for _ in range(b):
        wh = torch.exp(torch.empty(n, 2).uniform_(math.log(4), math.log(size / 2), generator=gen))
        ctr = torch.rand(n, 2, generator=gen) * (size - 2) + 1
        boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], -1).clamp(0, size)
        out.append({"boxes": boxes, "labels": torch.randint(0, c, (n,), generator=gen)})
    return out


def ssd_targets(gen: torch.Generator, b: int, n: int, c: int) -> Targets:
    """``n`` boxes per image in [0, 1] coordinates, sides uniform in [0.05, 0.5]."""
    out = []
    for _ in range(b):
        wh = torch.rand(n, 2, generator=gen) * 0.45 + 0.05
        ctr = torch.rand(n, 2, generator=gen)
        boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], -1).clamp(0, 1)
        out.append({"boxes": boxes, "labels": torch.randint(0, c, (n,), generator=gen)})
    return out


@dataclass
class Case:
    name: str
    preds: list[Tensor]  # the tensors gradients are taken with respect to
    targets: Targets
    num_classes: int  # for pad_targets
    ours: Callable[[bool], Tensor]  # validate -> total loss
    naive: Callable[[], Tensor]  # total loss of the loop port
    note: str = ""


def yolo_heads(gen: torch.Generator, b: int, c: int, size: int, strides: tuple[int, ...]) -> list[Tensor]:
    return [
        torch.randn(b, 3 * (5 + c), size // s, size // s, generator=gen).requires_grad_() for s in strides
    ]


def case_yolov3(size: int, b: int = 16, c: int = 80, n: int = 20) -> Case:
    gen = torch.Generator().manual_seed(size)
    preds, targets = yolo_heads(gen, b, c, size, (8, 16, 32)), yolo_targets(gen, b, size, n, c)
    crit = {v: YOLOv3Loss(c, validate=v) for v in (True, False)}
    return Case(
        f"YOLOv3Loss B={b} {size}² C={c} {n} boxes/img",
        preds,
        targets,
        c,
        lambda v: crit[v](preds, targets).total,
        lambda: sum(test_yolov3.ref_loss(preds, targets, c)),
        "port: float64 labels",
    )


def case_yolov4_tiny(size: int = 416, b: int = 16, c: int = 80, n: int = 20) -> Case:
    gen = torch.Generator().manual_seed(size + 4)
    preds, targets = yolo_heads(gen, b, c, size, (32, 16)), yolo_targets(gen, b, size, n, c)
    crit = {v: YOLOv4Loss(c, "tiny", validate=v) for v in (True, False)}
    return Case(
        f"YOLOv4Loss tiny B={b} {size}² C={c} {n} boxes/img",
        preds,
        targets,
        c,
        lambda v: crit[v](preds, targets).total,
        # the port with CIoU's α held constant, as detloss does (the TF original differentiates it)
        lambda: test_yolov4.ref_loss(preds, targets, c, alpha_grad=False),
        "port: float64 labels",
    )


def case_yolov5(size: int = 640, b: int = 16, c: int = 80, n: int = 20) -> Case:
    gen = torch.Generator().manual_seed(size + 5)
    preds, targets = yolo_heads(gen, b, c, size, (8, 16, 32)), yolo_targets(gen, b, size, n, c)
    crit = {v: YOLOv5Loss(c, validate=v) for v in (True, False)}
    return Case(
        f"YOLOv5Loss B={b} {size}² C={c} {n} boxes/img",
        preds,
        targets,
        c,
        lambda v: crit[v](preds, targets).total,
        lambda: test_yolov5.reference_loss(preds, targets, c, YOLOV5_ANCHORS, (8, 16, 32), test_yolov5.HYP)[
            0
        ],
    )


def case_ssd300(b: int = 32, c: int = 20, n: int = 10) -> Case:
    gen = torch.Generator().manual_seed(300)
    priors = test_ssd.ssd300_priors().float()
    assert priors.shape == (8732, 4)
    loc = torch.randn(b, 8732, 4, generator=gen).requires_grad_()
    conf = torch.randn(b, 8732, c + 1, generator=gen).requires_grad_()
    targets = ssd_targets(gen, b, n, c)
    crit = {v: SSDLoss(c, priors, validate=v) for v in (True, False)}
    return Case(
        f"SSDLoss SSD300 B={b} 8732 priors C={c + 1} {n} boxes/img",
        [loc, conf],
        targets,
        c,
        lambda v: crit[v]((loc, conf), targets).total,
        lambda: sum(test_ssd.ref_loss(loc, conf, targets, priors)),
    )


CASES: dict[str, Callable[[], Case]] = {
    "yolov3-640": lambda: case_yolov3(640),
    "yolov3-416": lambda: case_yolov3(416),
    "yolov5-640": case_yolov5,
    "ssd300": case_ssd300,
    "yolov4tiny-416": case_yolov4_tiny,
}


def grads(case: Case, fn: Callable[[], Tensor]) -> tuple[Tensor, tuple[Tensor, ...]]:
    loss = fn()
    return loss.detach(), torch.autograd.grad(loss, case.preds)


def rel_diffs(
    a: tuple[Tensor, tuple[Tensor, ...]], b: tuple[Tensor, tuple[Tensor, ...]]
) -> tuple[float, float]:
    """Relative difference of the losses, and max |Δgrad| / max |grad_b| over all heads."""
    (la, ga), (lb, gb) = a, b
    d_loss = float(((la.double() - lb.double()).abs() / lb.double().abs()).item())
    d_grad = max(float((x.double() - y.double()).abs().max()) for x, y in zip(ga, gb, strict=True))
    scale = max(float(y.double().abs().max()) for y in gb)
    return d_loss, d_grad / scale


def interleaved(
    fns: dict[str, Callable[[], object]], repeats: int, times: dict[str, list[float]]
) -> dict[str, float]:
    """Median ms per call; every round calls each function once. Functions given ``times`` already
    (a loop port too slow to repeat) are not run again."""
    done = set(times)
    times = {k: list(times.get(k, [])) for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            if k in done:
                continue
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def run_case(case: Case, repeats: int, slow_s: float) -> dict[str, object]:
    t0 = time.perf_counter()
    ref = grads(case, case.naive)  # also the warm-up of the port
    first = time.perf_counter() - t0
    ours = grads(case, lambda: case.ours(True))
    d_loss, d_grad = rel_diffs(ours, ref)
    grads(case, lambda: case.ours(False))  # warm-up
    fns: dict[str, Callable[[], object]] = {
        "ours": lambda: grads(case, lambda: case.ours(True)),
        "ours_nv": lambda: grads(case, lambda: case.ours(False)),
        "pad": lambda: pad_targets(case.targets, case.num_classes, validate=True),
        "pad_nv": lambda: pad_targets(case.targets, case.num_classes, validate=False),
        "naive": lambda: grads(case, case.naive),
    }
    slow = first > slow_s  # a port taking minutes per call is timed once, by its first call
    t = interleaved(fns, repeats, {"naive": [first]} if slow else {})
    naive_runs = 1 if slow else repeats
    return {"name": case.name, **t, "naive_runs": naive_runs, "d_loss": d_loss, "d_grad": d_grad}


def fmt(ms: float) -> str:
    return f"{ms:.3g}" if ms < 1000 else f"{ms:.0f}"


def table(rows: list[dict[str, object]]) -> str:
    head = ["case", "ours ms", "ours nv ms", "pad ms (val / nv)", "naive ms", "ratio", "Δloss", "Δgrad"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        naive = fmt(r["naive"]) + (" (1 run)" if r["naive_runs"] == 1 else "")
        cells = [
            r["name"],
            fmt(r["ours"]),
            fmt(r["ours_nv"]),
            f"{r['pad']:.3g} / {r['pad_nv']:.3g}",
            naive,
            f"{r['naive'] / r['ours']:.1f}×",
            f"{r['d_loss']:.1e}",
            f"{r['d_grad']:.1e}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    ap.add_argument("--repeats", type=int, default=7, help="interleaved rounds (medians)")
    ap.add_argument("--slow", type=float, default=5.0, help="seconds: slower ports are timed by one call")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32 heads, eager (no compile)")
    rows = []
    for key in args.cases.split(","):
        rows.append(run_case(CASES[key](), args.repeats, args.slow))
        r = rows[-1]
        print(f"{key}: ours {fmt(r['ours'])} ms, naive {fmt(r['naive'])} ms", file=sys.stderr, flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
