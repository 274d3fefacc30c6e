"""EndToEndLoss side by side with ultralytics' ``E2ELoss`` / ``E2EDetectLoss`` (8.4.190): values, time, syncs.

Run in the side venv (torch + ultralytics 8.4.190; never a dependency of detloss)::

    PYTHONPATH=src <side-venv>/bin/python benchmarks/compare_e2e.py [--skip-time] [--memory]

1. Agreement (float64, ``torch.set_default_dtype(torch.float64)`` so that ultralytics' own target
   tensors are float64 too): relative error of the total, of every weighted component, of every
   component of each branch, and of the gradients of both branches' heads (max |Δgrad| / max |grad|),
   for YOLO26 (reg_max 1), YOLOv10 (reg_max 16) at several (epoch, epochs), and the legacy form
   (``E2EDetectLoss``: top-10 and top-1, weights 1 and 1). ultralytics keeps its loss vector in float32,
   so ~1e-8 is the floor.
2. Time (float32, 2 threads, interleaved rounds, medians) of forward + backward and the aten ops and
   host syncs of one step (:class:`detloss.profiling.DispatchCounter`), at B = 16, 640 px, C = 80,
   12 boxes per image.
3. ``--memory`` (instead of 1 and 2): peak extra memory and forward + backward time of the YOLO26
   configuration at B = 8, 640 px, C = 80, with 500 boxes per image (sides 6–64 px) and with 12. Memory
   is measured the way ``benchmarks/bench.py`` measures it: each (implementation, boxes) in a fresh
   subprocess, one warm-up step, then the growth of the peak resident set (VmHWM, reset through
   ``/proc/self/clear_refs``) over the resident set before the step, with glibc's mmap threshold at
   16 KiB so that freed blocks leave the resident set and cannot hide a later allocation. Times are
   medians of interleaved rounds in this process (float32, 2 threads).

ultralytics is AGPL-3.0: it is only called here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

from benchmarks.peak_memory import in_fresh_process, peak_extra_mb  # noqa: E402
from detloss.assign import pad_targets  # noqa: E402
from detloss.criteria import EndToEndLoss, YOLOv8Loss, yolo26_loss, yolov10_loss

STRIDES = (8, 16, 32)


def make_heads(b, size, c, reg_max, g, dtype, positive=True):
    """Per-stride heads; with reg_max 1 the distances are 0.2 … 6.2 cells (``positive``) or raw
    normal numbers (inverted predicted boxes possible)."""
    preds = []
    for s in STRIDES:
        h = size // s
        box = torch.randn(b, 4 * reg_max, h, h, generator=g, dtype=torch.float64)
        if reg_max == 1 and positive:
            box = 0.2 + 6 * torch.rand(b, 4, h, h, generator=g, dtype=torch.float64)
        cls = torch.randn(b, c, h, h, generator=g, dtype=torch.float64) - 3.0
        preds.append(torch.cat((box, cls), 1).to(dtype).requires_grad_())
    return preds


def make_targets(b, size, c, n, lo, hi, g, dtype, empty=()):
    targets = []
    for i in range(b):
        k = 0 if i in empty else n
        wh = lo + (hi - lo) * torch.rand(k, 2, generator=g, dtype=torch.float64)
        xy = torch.rand(k, 2, generator=g, dtype=torch.float64) * (size - wh)
        targets.append(
            {"boxes": torch.cat((xy, xy + wh), 1).to(dtype), "labels": torch.randint(0, c, (k,), generator=g)}
        )
    return targets


class _FakeModel(nn.Module):
    """What ``v8DetectionLoss.__init__`` reads from a model: args (gains, epochs), model[-1] (stride,
    nc, reg_max) and a parameter for the device."""

    def __init__(self, nc, reg_max, epochs):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))
        self.args = SimpleNamespace(box=7.5, cls=0.5, dfl=1.5, epochs=epochs)
        self.model = [
            SimpleNamespace(stride=torch.tensor(STRIDES, dtype=torch.float32), nc=nc, reg_max=reg_max)
        ]


def _batch(targets, size):
    dt = torch.get_default_dtype()
    idx, cls, boxes = [], [], []
    for i, t in enumerate(targets):
        bx = t["boxes"].to(dt)
        idx.append(torch.full((len(bx),), float(i)))
        cls.append(t["labels"].to(dt))
        boxes.append(torch.cat(((bx[:, :2] + bx[:, 2:]) / 2, bx[:, 2:] - bx[:, :2]), 1) / size)
    return {"batch_idx": torch.cat(idx), "cls": torch.cat(cls)[:, None], "bboxes": torch.cat(boxes)}


def _mapping(preds, reg_max):
    r4 = 4 * reg_max
    return {
        "boxes": torch.cat([p[:, :r4].flatten(2) for p in preds], 2),
        "scores": torch.cat([p[:, r4:].flatten(2) for p in preds], 2),
        "feats": preds,
    }


def ultralytics_e2e(nc, reg_max, epochs, epoch, legacy=False):
    """ultralytics' criterion with its weights stepped to ``epoch`` (``update()`` once per finished epoch)."""
    from ultralytics.utils.loss import E2EDetectLoss, E2ELoss

    model = _FakeModel(nc, reg_max, epochs)
    if legacy:
        return E2EDetectLoss(model)
    crit = E2ELoss(model)
    for _ in range(epoch):
        crit.update()
    return crit


def ours_e2e(nc, reg_max, epochs, legacy=False, validate=True):
    if legacy:
        one2many = YOLOv8Loss(nc, STRIDES, reg_max, topk=10, validate=validate)
        one2one = YOLOv8Loss(nc, STRIDES, reg_max, topk=1, validate=validate)
        return EndToEndLoss(one2many, one2one, epochs=epochs, progressive=False)
    build = yolo26_loss if reg_max == 1 else yolov10_loss
    return build(nc, epochs=epochs, validate=validate)


AGREE = [
    # (label, reg_max, epochs, epoch, legacy, b, size, c, n, lo, hi, positive distances)
    ("YOLO26 e=0/100", 1, 100, 0, False, 4, 320, 80, 12, 8, 200, True),
    ("YOLO26 e=37/100", 1, 100, 37, False, 4, 320, 80, 12, 8, 200, True),
    ("YOLO26 e=99/100", 1, 100, 99, False, 4, 320, 80, 12, 8, 200, True),
    ("YOLO26 e=3/5, dense 60, tiny", 1, 5, 3, False, 2, 256, 5, 60, 2, 60, True),
    ("YOLOv10 e=0/100", 16, 100, 0, False, 4, 320, 80, 12, 8, 200, True),
    ("YOLOv10 e=50/100", 16, 100, 50, False, 4, 320, 80, 12, 8, 200, True),
    ("YOLOv10 e=9/10, dense 60", 16, 10, 9, False, 2, 256, 5, 60, 4, 60, True),
    ("legacy YOLOv10 (1/1, top-1)", 16, 100, 0, True, 4, 320, 80, 12, 8, 200, True),
    ("YOLO26 raw distances (inverted boxes)", 1, 100, 10, False, 4, 320, 80, 12, 8, 200, False),
]


def _rel(a, b):
    a, b = float(torch.as_tensor(a).detach()), float(torch.as_tensor(b).detach())
    return abs(a - b) / abs(b) if b != 0 else abs(a - b)


def agreement(seeds=2):
    torch.set_default_dtype(torch.float64)
    rows = []
    for label, r, epochs, epoch, legacy, b, size, c, n, lo, hi, positive in AGREE:
        worst: dict[str, float] = {}

        def note(key, value, worst=worst):
            worst[key] = max(worst.get(key, 0.0), value)

        for seed in range(seeds):
            g = torch.Generator().manual_seed(seed)
            pm = make_heads(b, size, c, r, g, torch.float64, positive)
            po = make_heads(b, size, c, r, g, torch.float64, positive)
            targets = make_targets(b, size, c, n, lo, hi, g, torch.float64, empty=(1,))
            leaves = pm + po
            ul = ultralytics_e2e(c, r, epochs, epoch, legacy)
            batch = _batch(targets, size)
            vec, _ = ul({"one2many": _mapping(pm, r), "one2one": _mapping(po, r)}, batch)
            ul_grads = torch.autograd.grad(vec.sum(), leaves)
            ul_m = ul.one2many.loss(_mapping(pm, r), batch)[0].detach() / b
            ul_o = ul.one2one.loss(_mapping(po, r), batch)[0].detach() / b
            crit = ours_e2e(c, r, epochs, legacy)
            out = crit({"one2many": pm, "one2one": po}, targets, epoch=epoch)
            grads = torch.autograd.grad(out.total, leaves)
            keys = ["box", "cls", "l1" if r == 1 else "dfl"]
            note("total", _rel(out.total, vec.sum()))
            for i, k in enumerate(keys):
                note(k, _rel(out.components[k], vec[i] / b))
                note(f"o2m {k}", _rel(out.branches["one2many"].components[k], ul_m[i]))
                note(f"o2o {k}", _rel(out.branches["one2one"].components[k], ul_o[i]))
            for name, sl in (("grad o2m", slice(0, 3)), ("grad o2o", slice(3, 6))):
                for a, bb in zip(grads[sl], ul_grads[sl], strict=True):
                    note(name, float((a - bb).abs().max() / bb.abs().max().clamp(min=1e-300)))
        rows.append((label, worst))
    torch.set_default_dtype(torch.float32)
    return rows


def timing(rounds=15):
    from detloss.profiling import DispatchCounter

    torch.set_num_threads(2)
    b, size, c, n = 16, 640, 80, 12
    g = torch.Generator().manual_seed(0)
    pm, po = make_heads(b, size, c, 1, g, torch.float32), make_heads(b, size, c, 1, g, torch.float32)
    targets = make_targets(b, size, c, n, 8, 320, g, torch.float32)
    leaves = pm + po
    batch = _batch(targets, size)
    ul = ultralytics_e2e(c, 1, 100, 10)
    ours, ours_nv = ours_e2e(c, 1, 100), ours_e2e(c, 1, 100, validate=False)
    padded = pad_targets(targets, c, validate=False)
    steps = {
        "ultralytics E2ELoss": lambda: ul({"one2many": _mapping(pm, 1), "one2one": _mapping(po, 1)}, batch)[
            0
        ].sum(),
        "detloss (validate=True)": lambda: ours({"one2many": pm, "one2one": po}, targets, epoch=10).total,
        "detloss (validate=False, padded)": lambda: (
            ours_nv({"one2many": pm, "one2one": po}, padded, epoch=10).total
        ),
    }
    times: dict[str, list[float]] = {k: [] for k in steps}
    for fn in steps.values():
        torch.autograd.grad(fn(), leaves)  # warm-up
    for _ in range(rounds):
        for k, fn in steps.items():
            t0 = time.perf_counter()
            torch.autograd.grad(fn(), leaves)
            times[k].append(time.perf_counter() - t0)
    counts = {}
    for k, fn in steps.items():
        with DispatchCounter() as cnt:
            torch.autograd.grad(fn(), leaves)
        counts[k] = (cnt.ops, cnt.syncs, dict(cnt.sync_ops))
    return {k: statistics.median(v) for k, v in times.items()}, counts


MEMORY_CASES = ((500, 6, 64), (12, 6, 64))  # (boxes per image, smallest side, largest side) in pixels
MEMORY_B, MEMORY_SIZE, MEMORY_C = 8, 640, 80


def _memory_step(impl, n, lo, hi, seed=0):
    """One YOLO26 forward + backward (a closure) of ``impl`` ("ultralytics" or "detloss") on B = 8
    heads of 640 px, C = 80, ``n`` boxes per image with sides in [lo, hi] pixels."""
    b, size, c = MEMORY_B, MEMORY_SIZE, MEMORY_C
    g = torch.Generator().manual_seed(seed)
    pm, po = make_heads(b, size, c, 1, g, torch.float32), make_heads(b, size, c, 1, g, torch.float32)
    targets = make_targets(b, size, c, n, lo, hi, g, torch.float32)
    leaves = pm + po
    if impl == "ultralytics":
        ul, batch = ultralytics_e2e(c, 1, 100, 10), _batch(targets, size)

        def total():
            return ul({"one2many": _mapping(pm, 1), "one2one": _mapping(po, 1)}, batch)[0].sum()
    else:
        ours = ours_e2e(c, 1, 100)

        def total():
            return ours({"one2many": pm, "one2one": po}, targets, epoch=10).total

    def step():
        torch.autograd.grad(total(), leaves)

    return step


def _memory_worker(impl, n, lo, hi):
    """Peak extra resident memory (MB) of one step (:func:`benchmarks.peak_memory.peak_extra_mb`)."""
    torch.set_num_threads(2)
    return peak_extra_mb(_memory_step(impl, n, lo, hi))


def measure_memory(impl, n, lo, hi):
    """:func:`_memory_worker` in a fresh Python process (:func:`benchmarks.peak_memory.in_fresh_process`)."""
    return in_fresh_process(__file__, [impl, n, lo, hi])


def memory_and_time(rounds=7):
    """``{(impl, n): (peak extra MB, median fwd+bwd s)}`` for every case of :data:`MEMORY_CASES`."""
    torch.set_num_threads(2)
    impls = ("ultralytics", "detloss")
    out = {}
    for n, lo, hi in MEMORY_CASES:
        steps = {impl: _memory_step(impl, n, lo, hi) for impl in impls}
        times = {impl: [] for impl in impls}
        for step in steps.values():
            step()  # warm-up
        for _ in range(rounds):  # interleaved, so that a change of the machine's load hits both alike
            for impl, step in steps.items():
                t0 = time.perf_counter()
                step()
                times[impl].append(time.perf_counter() - t0)
        del steps
        for impl in impls:
            out[(impl, n)] = (measure_memory(impl, n, lo, hi), statistics.median(times[impl]))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--skip-time", action="store_true")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--memory", action="store_true", help="peak memory and time at 500 and 12 boxes/image")
    ap.add_argument("--rounds", type=int, default=7, help="timing rounds of --memory (default 7)")
    ap.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_worker:
        print(_memory_worker(*json.loads(args.memory_worker)))
        return
    if args.memory:
        print(
            f"YOLO26 fwd+bwd, B={MEMORY_B}, {MEMORY_SIZE} px, C={MEMORY_C}, float32, 2 threads: "
            "peak extra RSS (fresh process each) and median time"
        )
        res = memory_and_time(args.rounds)
        for n, lo, hi in MEMORY_CASES:
            (mu, tu), (md, td) = res[("ultralytics", n)], res[("detloss", n)]
            print(f"  {n} boxes/image (sides {lo}–{hi} px)")
            print(f"    ultralytics E2ELoss  {mu:8.1f} MB  {tu * 1e3:8.1f} ms")
            print(
                f"    detloss EndToEndLoss {md:8.1f} MB  {td * 1e3:8.1f} ms   "
                f"memory ×{md / mu:.3f}, time ×{td / tu:.2f} of ultralytics'"
            )
        return
    print("Agreement with ultralytics 8.4.190 (float64; relative errors, worst over seeds)")
    for label, worst in agreement(args.seeds):
        print(f"  {label}")
        print("    " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))
    if args.skip_time:
        return
    med, counts = timing()
    base = med["ultralytics E2ELoss"]
    print("\nYOLO26 fwd+bwd, B=16, 640 px, C=80, 12 boxes/image, float32, 2 threads (medians)")
    for k, t in med.items():
        ops, syncs, which = counts[k]
        print(f"  {k:34s} {t * 1e3:8.1f} ms  ×{base / t:4.2f}  ops {ops:5d}  syncs {syncs} {which or ''}")


if __name__ == "__main__":
    main()
