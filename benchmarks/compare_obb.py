"""YOLOv8OBBLoss side by side with ultralytics' ``v8OBBLoss`` (8.4.190): values, gradients, time, syncs.

Run in the side venv (torch + ultralytics 8.4.190; never a dependency of detloss)::

    PYTHONPATH=src <side-venv>/bin/python benchmarks/compare_obb.py [--skip-time | --speed | --memory]

1. Agreement (float64, ``torch.set_default_dtype(torch.float64)`` so that ultralytics' own target and
   loss tensors are float64 too): relative error of the total and of every component, and of the
   gradients of the heads (max |Δgrad| / max |grad|), with detloss fed the per-stride heads and the
   ultralytics mapping built from them; targets include boxes below 2 px (dropped by both) and an
   image without boxes.
2. Time (float32, 2 threads, interleaved rounds, medians) of forward + backward and the aten ops and
   host syncs of one step (:class:`detloss.profiling.DispatchCounter`), at B = 8, 1024 px, C = 15,
   30 boxes per image; ``--speed`` runs only this (``--rounds``), with one-thread process CPU time
   medians beside the two-thread wall times (the CPU time of a step is steadier than its wall time on
   a loaded machine).
3. ``--memory`` (alone): peak extra memory and forward + backward time at B = 2, 1024 px, C = 15,
   1,500 boxes per image (sides 6–64 px, DOTA's dense scenes). Memory is measured as
   ``compare_e2e.py --memory`` measures it: each implementation in a fresh subprocess, one warm-up
   step, then the growth of the peak resident set (VmHWM, reset through ``/proc/self/clear_refs``)
   over the resident set before the step, with glibc's mmap threshold at 16 KiB so that freed blocks
   leave the resident set and cannot hide a later allocation. Times are medians of interleaved rounds
   in this process (float32, 2 threads).

ultralytics is AGPL-3.0: it is only called here.
"""

from __future__ import annotations

import argparse
import json
import math
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
from detloss.criteria import YOLOv8OBBLoss

STRIDES = (8, 16, 32)


def make_heads(b, size, c, reg_max, g, dtype, raw_angle=False):
    """Per-stride heads ``(B, 4·reg_max + C + 1, H, W)``; the angle channel is the v8/11 head's
    (σ(z) − ¼)·π of a normal z (or z itself, YOLO26), the leaf holds it directly."""
    preds = []
    for s in STRIDES:
        h = size // s
        box = torch.randn(b, 4 * reg_max, h, h, generator=g, dtype=torch.float64)
        if reg_max == 1:
            box = 0.2 + 6 * torch.rand(b, 4, h, h, generator=g, dtype=torch.float64)
        cls = torch.randn(b, c, h, h, generator=g, dtype=torch.float64) - 3.0
        z = torch.randn(b, 1, h, h, generator=g, dtype=torch.float64)
        angle = z if raw_angle else (z.sigmoid() - 0.25) * math.pi
        preds.append(torch.cat((box, cls, angle), 1).to(dtype).requires_grad_())
    return preds


def make_targets(b, size, c, n, lo, hi, g, dtype, empty=(), tiny=0):
    """xywhr targets as the data sets canonicalise them (w the longer side, θ in [−π/4, 3π/4)),
    ``tiny`` of them per image with a side below 2 px."""
    targets = []
    for i in range(b):
        k = 0 if i in empty else n
        wh = lo + (hi - lo) * torch.rand(k, 2, generator=g, dtype=torch.float64)
        wh = torch.stack((wh.amax(1), wh.amin(1)), 1)
        if k and tiny:
            wh[:tiny, 1] = 0.5 + torch.rand(tiny, generator=g, dtype=torch.float64)
        xy = wh.amax(1, keepdim=True) / 2 + torch.rand(k, 2, generator=g, dtype=torch.float64) * (
            size - wh.amax(1, keepdim=True)
        )
        theta = (torch.rand(k, 1, generator=g, dtype=torch.float64) - 0.25) * math.pi
        labels = torch.randint(0, c, (k,), generator=g)
        targets.append({"boxes": torch.cat((xy, wh, theta), 1).to(dtype), "labels": labels})
    return targets


class _FakeModel(nn.Module):
    """What ``v8OBBLoss.__init__`` reads from a model: args (gains; ``epochs`` for ``E2ELoss``),
    model[-1] (stride, nc, reg_max) and a parameter for the device."""

    def __init__(self, nc, reg_max, epochs=100):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))
        self.args = SimpleNamespace(box=7.5, cls=0.5, dfl=1.5, angle=1.0, epochs=epochs)
        self.model = [
            SimpleNamespace(stride=torch.tensor(STRIDES, dtype=torch.float32), nc=nc, reg_max=reg_max)
        ]


def _batch(targets, size):
    dt = torch.get_default_dtype()
    idx, cls, boxes = [], [], []
    scale = torch.tensor([size, size, size, size, 1.0], dtype=dt)
    for i, t in enumerate(targets):
        bx = t["boxes"].to(dt)
        idx.append(torch.full((len(bx),), float(i)))
        cls.append(t["labels"].to(dt))
        boxes.append(bx / scale)
    return {"batch_idx": torch.cat(idx), "cls": torch.cat(cls)[:, None], "bboxes": torch.cat(boxes)}


def mapping(preds, reg_max, c):
    r4 = 4 * reg_max
    return {
        "boxes": torch.cat([p[:, :r4].flatten(2) for p in preds], 2),
        "scores": torch.cat([p[:, r4 : r4 + c].flatten(2) for p in preds], 2),
        "angle": torch.cat([p[:, r4 + c :].flatten(2) for p in preds], 2),
        "feats": preds,
    }


def ultralytics_obb(nc, reg_max):
    from ultralytics.utils.loss import v8OBBLoss

    return v8OBBLoss(_FakeModel(nc, reg_max))


AGREE = [
    # (label, reg_max, b, size, c, n, lo, hi, tiny, raw angle, layout)
    ("v8/11-OBB, 15 boxes", 16, 4, 320, 15, 15, 4, 200, 2, False, "per-stride"),
    ("v8/11-OBB, mapping layout", 16, 4, 320, 15, 15, 4, 200, 2, False, "mapping"),
    ("v8/11-OBB, dense 80, small", 16, 2, 256, 5, 80, 2, 40, 5, False, "per-stride"),
    ("reg_max 1 (YOLO26-OBB head), raw angle", 1, 4, 320, 15, 15, 4, 200, 2, True, "per-stride"),
]


def _rel(a, b):
    a, b = float(torch.as_tensor(a).detach()), float(torch.as_tensor(b).detach())
    return abs(a - b) / abs(b) if b != 0 else abs(a - b)


def agreement(seeds=3):
    torch.set_default_dtype(torch.float64)
    rows = []
    for label, r, b, size, c, n, lo, hi, tiny, raw, layout in AGREE:
        worst: dict[str, float] = {}

        def note(key, value, worst=worst):
            worst[key] = max(worst.get(key, 0.0), value)

        for seed in range(seeds):
            g = torch.Generator().manual_seed(seed)
            preds = make_heads(b, size, c, r, g, torch.float64, raw)
            targets = make_targets(b, size, c, n, lo, hi, g, torch.float64, empty=(1,), tiny=tiny)
            ul = ultralytics_obb(c, r)
            vec, _ = ul(mapping(preds, r, c), _batch(targets, size))
            ul_grads = torch.autograd.grad(vec.sum(), preds)
            crit = YOLOv8OBBLoss(c, STRIDES, r)
            out = crit(mapping(preds, r, c) if layout == "mapping" else preds, targets)
            grads = torch.autograd.grad(out.total, preds)
            note("total", _rel(out.total, vec.sum()))
            for i, k in enumerate(["box", "cls", "l1" if r == 1 else "dfl", "angle"]):
                note(k, _rel(out.components[k], vec[i] / b))
            for a, bb in zip(grads, ul_grads, strict=True):
                note("grad", float((a - bb).abs().max() / bb.abs().max().clamp(min=1e-300)))
        rows.append((label, worst))
    torch.set_default_dtype(torch.float32)
    return rows


def ultralytics_e2e_obb(nc, epochs, epoch):
    """YOLO26-OBB's criterion as ultralytics builds it (``E2ELoss(model, v8OBBLoss)``), stepped to
    ``epoch`` the way its trainer does (``update()`` at each epoch's end)."""
    from ultralytics.utils.loss import E2ELoss, v8OBBLoss

    crit = E2ELoss(_FakeModel(nc, 1, epochs), v8OBBLoss)
    for _ in range(epoch):
        crit.update()
    return crit


AGREE_E2E = [
    # (label, b, size, c, n, lo, hi, tiny, epochs, epoch)
    ("YOLO26-OBB E2E, epoch 0 of 30", 4, 320, 15, 15, 4, 200, 2, 30, 0),
    ("YOLO26-OBB E2E, epoch 17 of 30, dense 60", 2, 256, 5, 60, 2, 60, 4, 30, 17),
    ("YOLO26-OBB E2E, epoch 29 of 30", 4, 320, 15, 15, 4, 200, 2, 30, 29),
]


def agreement_e2e(seeds=3):
    """detloss's ``yolo26_loss(task="obb")`` against ``E2ELoss(v8OBBLoss)``: the total, the weighted
    components (the loss vector / B), the logged items (the one-to-one branch's) and the gradients
    of both branches' heads (raw angles)."""
    from detloss.criteria import yolo26_loss

    torch.set_default_dtype(torch.float64)
    rows = []
    for label, b, size, c, n, lo, hi, tiny, epochs, epoch in AGREE_E2E:
        worst: dict[str, float] = {}

        def note(key, value, worst=worst):
            worst[key] = max(worst.get(key, 0.0), value)

        for seed in range(seeds):
            g = torch.Generator().manual_seed(100 + seed)
            pm = make_heads(b, size, c, 1, g, torch.float64, raw_angle=True)
            po = make_heads(b, size, c, 1, g, torch.float64, raw_angle=True)
            targets = make_targets(b, size, c, n, lo, hi, g, torch.float64, empty=(1,), tiny=tiny)
            ul = ultralytics_e2e_obb(c, epochs, epoch)
            heads = {"one2many": mapping(pm, 1, c), "one2one": mapping(po, 1, c)}
            vec, items = ul(heads, _batch(targets, size))
            ul_grads = torch.autograd.grad(vec.sum(), pm + po)
            crit = yolo26_loss(c, task="obb", epochs=epochs)
            out = crit({"one2many": pm, "one2one": po}, targets, epoch=epoch)
            grads = torch.autograd.grad(out.total, pm + po)
            note("total", _rel(out.total, vec.sum()))
            one2one = out.branches["one2one"].components
            for i, k in enumerate(["box", "cls", "l1", "angle"]):
                note(k, _rel(out.components[k], vec[i] / b))
                note("items", _rel(one2one[k], items[f"{k}_loss"]))
            for a, bb in zip(grads, ul_grads, strict=True):
                note("grad", float((a - bb).abs().max() / bb.abs().max().clamp(min=1e-300)))
        rows.append((label, worst))
    torch.set_default_dtype(torch.float32)
    return rows


def _speed_steps():
    """The forward + backward closures timed by :func:`timing` (B = 8, 1024 px, C = 15, 30 boxes
    per image, float32) and the heads they differentiate."""
    b, size, c, n = 8, 1024, 15, 30
    g = torch.Generator().manual_seed(0)
    preds = make_heads(b, size, c, 16, g, torch.float32)
    targets = make_targets(b, size, c, n, 6, 300, g, torch.float32, tiny=1)
    batch = _batch(targets, size)
    ul = ultralytics_obb(c, 16)
    ours, ours_nv = YOLOv8OBBLoss(c), YOLOv8OBBLoss(c, validate=False)
    padded = pad_targets(targets, c, fmt="xywhr", validate=False)
    steps = {
        "ultralytics v8OBBLoss": lambda: ul(mapping(preds, 16, c), batch)[0].sum(),
        "detloss (validate=True)": lambda: ours(preds, targets).total,
        "detloss (validate=False, padded)": lambda: ours_nv(preds, padded).total,
    }
    return steps, preds


def _interleaved(steps, preds, rounds, clock):
    """Median of ``rounds`` interleaved forward + backward steps each (after one warm-up each)."""
    times: dict[str, list[float]] = {k: [] for k in steps}
    for fn in steps.values():
        torch.autograd.grad(fn(), preds)  # warm-up
    for _ in range(rounds):
        for k, fn in steps.items():
            t0 = clock()
            torch.autograd.grad(fn(), preds)
            times[k].append(clock() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def timing(rounds=7, cpu_time=False):
    """Medians of the two-thread wall time (and with ``cpu_time`` of the one-thread process CPU
    time) of every step of :func:`_speed_steps`, and each one's ``(ops, syncs, sync ops)``."""
    from detloss.profiling import DispatchCounter

    steps, preds = _speed_steps()
    torch.set_num_threads(2)
    wall = _interleaved(steps, preds, rounds, time.perf_counter)
    cpu = None
    if cpu_time:
        torch.set_num_threads(1)
        cpu = _interleaved(steps, preds, rounds, time.process_time)
        torch.set_num_threads(2)
    counts = {}
    for k, fn in steps.items():
        with DispatchCounter() as cnt:
            torch.autograd.grad(fn(), preds)
        counts[k] = (cnt.ops, cnt.syncs, dict(cnt.sync_ops))
    return wall, counts, cpu


MEMORY_B, MEMORY_SIZE, MEMORY_C, MEMORY_N, MEMORY_SIDES = 2, 1024, 15, 1500, (6, 64)


def _memory_step(impl, seed=0):
    """One forward + backward (a closure) of ``impl`` ("ultralytics" or "detloss") at the memory
    case: B = 2, 1024 px, C = 15, 1,500 boxes per image with sides in 6–64 px."""
    b, size, c, n = MEMORY_B, MEMORY_SIZE, MEMORY_C, MEMORY_N
    g = torch.Generator().manual_seed(seed)
    preds = make_heads(b, size, c, 16, g, torch.float32)
    targets = make_targets(b, size, c, n, *MEMORY_SIDES, g, torch.float32, tiny=1)
    if impl == "ultralytics":
        ul, batch = ultralytics_obb(c, 16), _batch(targets, size)

        def total():
            return ul(mapping(preds, 16, c), batch)[0].sum()
    else:
        ours = YOLOv8OBBLoss(c)

        def total():
            return ours(preds, targets).total

    def step():
        torch.autograd.grad(total(), preds)

    return step


def _memory_worker(impl):
    """Peak extra resident memory (MB) of one step (:func:`benchmarks.peak_memory.peak_extra_mb`)."""
    torch.set_num_threads(2)
    return peak_extra_mb(_memory_step(impl))


def measure_memory(impl):
    """:func:`_memory_worker` in a fresh Python process (:func:`benchmarks.peak_memory.in_fresh_process`)."""
    return in_fresh_process(__file__, impl)


def memory_and_time(rounds=5):
    """``{impl: (peak extra MB, median fwd+bwd s)}`` at the memory case."""
    torch.set_num_threads(2)
    impls = ("ultralytics", "detloss")
    steps = {impl: _memory_step(impl) for impl in impls}
    times: dict[str, list[float]] = {impl: [] for impl in impls}
    for step in steps.values():
        step()  # warm-up
    for _ in range(rounds):  # interleaved, so that a change of the machine's load hits both alike
        for impl, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[impl].append(time.perf_counter() - t0)
    del steps
    return {impl: (measure_memory(impl), statistics.median(times[impl])) for impl in impls}


def print_speed(rounds, cpu_time):
    wall, counts, cpu = timing(rounds, cpu_time)
    base = wall["ultralytics v8OBBLoss"]
    print("OBB fwd+bwd, B=8, 1024 px, C=15, 30 boxes/image, float32 (medians of interleaved rounds)")
    print("  wall time with 2 threads" + (", process CPU time with 1 thread" if cpu else ""))
    for k, t in wall.items():
        ops, syncs, which = counts[k]
        line = f"  {k:34s} {t * 1e3:8.1f} ms  ×{base / t:4.2f}"
        if cpu:
            line += f"  cpu {cpu[k] * 1e3:8.1f} ms ×{cpu['ultralytics v8OBBLoss'] / cpu[k]:4.2f}"
        print(line + f"  ops {ops:5d}  syncs {syncs} {which or ''}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--skip-time", action="store_true")
    ap.add_argument("--speed", action="store_true", help="only the timing (wall and CPU time, ops, syncs)")
    ap.add_argument("--memory", action="store_true", help="only peak memory and time, 1,500 boxes/image")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (default 7)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_worker:
        print(_memory_worker(json.loads(args.memory_worker)))
        return
    if args.memory:
        lo, hi = MEMORY_SIDES
        print(
            f"OBB fwd+bwd, B={MEMORY_B}, {MEMORY_SIZE} px, C={MEMORY_C}, {MEMORY_N} boxes/image "
            f"(sides {lo}–{hi} px), float32, 2 threads: peak extra RSS (fresh process each), median time"
        )
        res = memory_and_time(args.rounds)
        (mu, tu), (md, td) = res["ultralytics"], res["detloss"]
        print(f"  ultralytics v8OBBLoss {mu:8.1f} MB  {tu * 1e3:8.1f} ms")
        print(
            f"  detloss YOLOv8OBBLoss {md:8.1f} MB  {td * 1e3:8.1f} ms   "
            f"memory ×{md / mu:.3f}, time ×{td / tu:.2f} of ultralytics'"
        )
        return
    if args.speed:
        print_speed(args.rounds, cpu_time=True)
        return
    print(
        "Agreement with ultralytics 8.4.190 v8OBBLoss and E2ELoss(v8OBBLoss) "
        "(float64; relative errors, worst over seeds)"
    )
    for label, worst in agreement(args.seeds) + agreement_e2e(args.seeds):
        print(f"  {label}")
        print("    " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))
    if args.skip_time:
        return
    print()
    print_speed(args.rounds, cpu_time=False)


if __name__ == "__main__":
    main()
