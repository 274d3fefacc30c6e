"""Time one YOLOv3Loss / YOLOv4Loss call (forward + backward): B = 16, 416×416, 80 classes, 20 boxes.

Run: ``PYTHONPATH=src python benchmarks/bench_yolo_v3_v4.py`` (2 threads, float32, CPU).
"""

from __future__ import annotations

import torch
import torch.utils.benchmark as tb

from detloss.criteria import YOLOv3Loss, YOLOv4Loss


def make_targets(gen: torch.Generator, b: int, size: int, n: int, c: int) -> list[dict[str, torch.Tensor]]:
    out = []
    for _ in range(b):
        wh = torch.exp(torch.empty(n, 2).uniform_(2.0, 5.5, generator=gen))
        ctr = torch.rand(n, 2, generator=gen) * size
        boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], -1).clamp(0, size)
        out.append({"boxes": boxes, "labels": torch.randint(0, c, (n,), generator=gen)})
    return out


def main() -> None:
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    b, size, c, n = 16, 416, 80, 20
    targets = make_targets(gen, b, size, n, c)
    cases = [
        ("YOLOv3Loss", YOLOv3Loss(c), (8, 16, 32)),
        ("YOLOv4Loss tiny", YOLOv4Loss(c), (32, 16)),
        ("YOLOv4Loss yolov4", YOLOv4Loss(c, "yolov4"), (32, 16, 8)),
    ]
    print(f"B={b}, {size}x{size}, {c} classes, {n} boxes/image, float32, {torch.get_num_threads()} threads")
    print(f"{'criterion':<20}{'fwd+bwd median (ms)':>22}{'fwd median (ms)':>18}")
    for name, crit, strides in cases:
        preds = [
            torch.randn(b, 3 * (5 + c), size // s, size // s, generator=gen).requires_grad_() for s in strides
        ]

        def step(crit=crit, preds=preds) -> None:
            crit(preds, targets).total.backward()

        def fwd(crit=crit, preds=preds) -> None:
            with torch.no_grad():
                crit(preds, targets)

        t_step = tb.Timer(stmt="step()", globals={"step": step}).blocked_autorange(min_run_time=3.0)
        t_fwd = tb.Timer(stmt="fwd()", globals={"fwd": fwd}).blocked_autorange(min_run_time=2.0)
        print(f"{name:<20}{t_step.median * 1e3:>22.1f}{t_fwd.median * 1e3:>18.1f}")
    print("peers: tensorflow-yolov3, yolov4-tiny-tf2 (TensorFlow) — skipped, TensorFlow is not installed")


if __name__ == "__main__":
    main()
