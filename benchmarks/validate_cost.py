"""What does input validation cost?  The checks ``validate=True`` adds, against the call without them.

    PYTHONPATH=src python benchmarks/validate_cost.py

For each case: the call with ``validate=False`` (forward, and backward for losses), the value checks
that ``validate=True`` adds, run alone, and their ratio. Each value check is one reduction and one
host sync (a sum for finiteness, an aminmax for focal targets, one pass over the whole batch for
``pad_targets``, the YOLO box centres included); shape and type checks run either way.

Timing: best of 9 runs of CPU time of this process (``time.process_time``), 1 thread. The machine
is shared: the wall-clock difference of two whole calls (validate on/off, torch.utils.benchmark)
swung by ±50 % with other jobs' load, which is why the checks are timed on their own.
"""

from __future__ import annotations

import time

import torch

import detloss
from detloss.assign.targets import _check_values, pad_targets
from detloss.checks import check_finite
from detloss.criteria import SSDLoss, YOLOv3Loss, YOLOv5Loss


def boxes(n: int, g: torch.Generator, size: float = 600.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * size
    return torch.cat((xy, xy + torch.rand(n, 2, generator=g) * size / 6 + 1), -1)


def focal_checks(x: torch.Tensor, y: torch.Tensor) -> None:
    check_finite("logits", x)
    lo, hi = torch.aminmax(y.flatten())
    assert bool((lo >= 0) & (hi <= 1))


def cases():
    """(case, size, the call with validate=False, the checks validate=True adds)."""
    g = torch.Generator().manual_seed(0)
    for n in (1_000, 100_000):
        p, t = boxes(n, g).requires_grad_(), boxes(n, g)
        pair = lambda p=p, t=t: (check_finite("boxes1", p), check_finite("boxes2", t))  # noqa: E731
        yield (
            "bbox_iou ciou fwd",
            f"N={n}",
            lambda p=p, t=t: detloss.bbox_iou(p, t, "ciou", validate=False),
            pair,
        )
        yield (
            "iou_loss ciou fwd+bwd",
            f"N={n}",
            lambda p=p, t=t: detloss.iou_loss(p, t, "ciou", validate=False).backward(),
            pair,
        )
    a, b = boxes(200, g), boxes(8732, g)
    yield (
        "box_iou iou",
        "200x8732",
        lambda: detloss.box_iou(a, b, validate=False),
        lambda: (check_finite("boxes1", a), check_finite("boxes2", b)),
    )
    for n in (1_000, 100_000):
        x = torch.randn(n, 80, generator=g).requires_grad_()
        y = (torch.rand(n, 80, generator=g) > 0.95).float()
        yield (
            "sigmoid_focal_loss fwd+bwd",
            f"{n}x80",
            lambda x=x, y=y: detloss.sigmoid_focal_loss(x, y, validate=False).backward(),
            lambda x=x, y=y: focal_checks(x, y),
        )
    d = torch.randn(32 * 8732, 4, generator=g).requires_grad_()
    e = torch.randn(32 * 8732, 4, generator=g)
    yield (
        "smooth_l1_loss fwd+bwd",
        "279424x4",
        lambda: detloss.smooth_l1_loss(d, e, validate=False).backward(),
        lambda: (check_finite("pred", d), check_finite("target", e)),
    )
    tg16 = [{"boxes": boxes(20, g), "labels": torch.randint(0, 80, (20,), generator=g)} for _ in range(16)]
    yield (
        "pad_targets",
        "B=16, 20 boxes",
        lambda: pad_targets(tg16, 80, validate=False),
        lambda: _check_values(
            [t["boxes"] for t in tg16], [t["labels"] for t in tg16], 80, torch.float32, None
        ),
    )
    # the criteria: pad_targets' checks (YOLOv3/v4: the box centres too, in the same single pass)
    tg8 = [
        {"boxes": boxes(20, g, 270.0), "labels": torch.randint(0, 80, (20,), generator=g)} for _ in range(8)
    ]
    target_checks = lambda: _check_values(  # noqa: E731
        [t["boxes"] for t in tg8], [t["labels"] for t in tg8], 80, torch.float32, None
    )
    yolo_checks = lambda: _check_values(  # noqa: E731
        [t["boxes"] for t in tg8], [t["labels"] for t in tg8], 80, torch.float32, (320, 320)
    )
    heads = [torch.randn(8, 3 * 85, 320 // s, 320 // s, generator=g).requires_grad_() for s in (8, 16, 32)]
    v3, v5 = YOLOv3Loss(80, validate=False), YOLOv5Loss(80, validate=False)
    yield (
        "YOLOv3Loss fwd+bwd",
        "B=8, 320², C=80",
        lambda: v3(heads, tg8).total.backward(),
        yolo_checks,
    )
    yield "YOLOv5Loss fwd+bwd", "B=8, 320², C=80", lambda: v5(heads, tg8).total.backward(), target_checks
    xy = torch.rand(8732, 2, generator=g) * 300
    ssd = SSDLoss(20, torch.cat((xy, torch.rand(8732, 2, generator=g) * 100 + 10), -1), validate=False)
    loc = torch.randn(8, 8732, 4, generator=g).requires_grad_()
    conf = torch.randn(8, 8732, 21, generator=g).requires_grad_()
    tg_ssd = [{"boxes": t["boxes"], "labels": t["labels"] % 20} for t in tg8]
    yield (
        "SSDLoss fwd+bwd",
        "B=8, 8732 priors",
        lambda: ssd((loc, conf), tg_ssd).total.backward(),
        target_checks,
    )


def measure(fn, repeats: int = 9) -> float:
    """Best-of-``repeats`` CPU time per call."""
    fn()  # warm-up
    t0 = time.process_time()
    fn()
    number = max(1, int(0.05 / max(time.process_time() - t0, 1e-6)))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        for _ in range(number):
            fn()
        best = min(best, (time.process_time() - t0) / number)
    return best


def main() -> None:
    torch.set_num_threads(1)  # one thread: no spin-waiting threads inflating the CPU time
    print(f"{'case':<28}{'size':>18}{'validate=False':>16}{'the checks':>14}{'overhead':>10}")
    for name, size, call, checks in cases():
        t_call, t_checks = measure(call), measure(checks)
        print(
            f"{name:<28}{size:>18}{t_call * 1e6:>13.1f} us{t_checks * 1e6:>11.1f} us{t_checks / t_call:>9.1%}"
        )


if __name__ == "__main__":
    main()
