"""YOLOv5Loss against the yolov5 package's own ``ComputeLoss``, side by side in one process.

    PYTHONPATH=src <side-venv>/bin/python benchmarks/compare_yolov5.py [--repeats 7] [--no-compile]

Needs an environment with the ``yolov5`` pip package (AGPL-3.0; it is only imported here, never a
dependency of detloss). Same inputs as ``benchmarks/bench.py --criteria`` (B = 16, 12 boxes per image, 640 px,
C = 80, float32 heads): for each implementation the aten ops and host syncs of one forward + backward
(:class:`detloss.profiling.DispatchCounter`, views not counted), the median fwd+bwd time in
interleaved rounds, and the agreement of the total loss and the gradients. ``ComputeLoss`` gets the
``(B, A, H, W, 5 + C)`` contiguous tensors that ``Detect`` gives it in training; YOLOv5Loss the raw
``(B, A·(5+C), H, W)`` heads (the same numbers).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from pathlib import Path

import torch
from torch import nn

from detloss.profiling import DispatchCounter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.cases
from tests.cases import cases, fwd_bwd  # noqa: E402


def _import_compute_loss():
    try:
        import pkg_resources  # noqa: F401  (yolov5's utils/general.py imports it; setuptools >= 81 has none)
    except ImportError:
        from packaging.version import parse

        sys.modules["pkg_resources"] = types.SimpleNamespace(parse_version=parse)
    from yolov5.utils.loss import ComputeLoss

    return ComputeLoss


def _compute_loss(num_classes: int, anchors_px: torch.Tensor, strides: tuple[int, ...], dev: torch.device):
    ComputeLoss = _import_compute_loss()

    class _Model(nn.Module):  # what ComputeLoss reads from a model: hyp, gr, the Detect layer
        def __init__(self) -> None:
            super().__init__()
            self.dummy = nn.Parameter(torch.zeros(1, device=dev))
            detect = types.SimpleNamespace(
                na=anchors_px.shape[1],
                nc=num_classes,
                nl=len(strides),
                anchors=anchors_px / torch.tensor(strides, dtype=torch.float32, device=dev)[:, None, None],
                stride=torch.tensor(strides, dtype=torch.float32, device=dev),
            )
            self.model = [detect]
            self.hyp = {
                "box": 0.05,
                "obj": 1.0,
                "cls": 0.5,
                "cls_pw": 1.0,
                "obj_pw": 1.0,
                "anchor_t": 4.0,
                "fl_gamma": 0.0,
                "label_smoothing": 0.0,
            }
            self.gr = 1.0

    return ComputeLoss(_Model())


def _yolov5_targets(targets: list[dict[str, torch.Tensor]], size: int) -> torch.Tensor:
    """(n, 6) rows (image, class, cx, cy, w, h) normalised, as YOLOv5's data loader gives them."""
    rows = []
    for i, t in enumerate(targets):
        b = t["boxes"] / size
        xywh = torch.cat(((b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]), 1)
        rows.append(torch.cat((torch.full((len(b), 1), float(i)), t["labels"][:, None].float(), xywh), 1))
    return torch.cat(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mode", default=None, help="torch.compile mode, e.g. reduce-overhead")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    case = next(c for c in cases() if c.name.startswith("YOLOv5Loss"))
    dev = torch.device(args.device)
    crit = case.build(False).to(dev)
    preds, targets = case.inputs(torch.Generator().manual_seed(0), (12,), torch.float32, dev)
    size = preds[0].shape[2] * crit.strides[0]
    a = crit.anchors.shape[1]
    anchors_px = (crit.anchors * torch.tensor(crit.strides, dtype=torch.float64)[:, None, None]).float()
    original = _compute_loss(crit.num_classes, anchors_px.to(dev), crit.strides, dev)
    detect_out = [
        p.detach().view(p.shape[0], a, -1, *p.shape[2:]).permute(0, 1, 3, 4, 2).contiguous().requires_grad_()
        for p in preds
    ]
    yt = _yolov5_targets([{k: v.cpu() for k, v in t.items()} for t in targets], size).to(dev)

    def theirs() -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        loss, _ = original(detect_out, yt)
        return loss.detach().sum(), torch.autograd.grad(loss.sum(), detect_out)

    def ours() -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        return fwd_bwd(crit, preds, targets)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    impls = {"YOLOv5Loss": ours, "ComputeLoss": theirs}
    if args.compile:
        compiled = torch.compile(crit, fullgraph=True, dynamic=True, mode=args.mode)
        t0 = time.perf_counter()
        fwd_bwd(compiled, preds, targets)
        sync()
        print(f"YOLOv5Loss compile (cold, first call): {time.perf_counter() - t0:.1f} s")
        impls["YOLOv5Loss compiled"] = lambda: fwd_bwd(compiled, preds, targets)

    for name, fn in impls.items():
        fn()  # warm-up
        if "compiled" not in name:
            with DispatchCounter() as c:
                fn()
            print(f"{name}: {c.ops} aten ops, {c.syncs} host syncs")
    times: dict[str, list[float]] = {k: [] for k in impls}
    for _ in range(args.repeats):
        for name, fn in impls.items():
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["ComputeLoss"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name}: median {1e3 * med:.1f} ms, ComputeLoss / this = {base / med:.2f}")

    (lo, go), (lt, gt) = ours(), theirs()
    rel = abs(float(lo) - float(lt)) / abs(float(lt))
    grad = max(
        float((g.view_as(h.permute(0, 1, 4, 2, 3)) - h.permute(0, 1, 4, 2, 3)).abs().max() / h.abs().max())
        for g, h in zip(go, gt, strict=True)
    )
    print(
        f"total: ours {float(lo):.6f}, ComputeLoss {float(lt):.6f}, rel diff {rel:.2e}; "
        f"max |Δgrad| / max |grad| {grad:.2e}"
    )


if __name__ == "__main__":
    main()
