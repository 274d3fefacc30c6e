"""YOLOv8Loss side by side with ultralytics' ``v8DetectionLoss`` (8.4.190): values, time, memory, ops.

Run in the side venv (torch 2.14.1 + ultralytics 8.4.190; never a dependency of detloss)::

    PYTHONPATH=src <side-venv>/bin/python benchmarks/compare_yolov8.py [--skip-time] [--skip-memory]

1. Agreement (float64, ``torch.set_default_dtype(torch.float64)`` so that ultralytics' own target
   tensors are float64 too): max relative error of each component and of the gradient of every head
   (max |Δgrad| / max |grad|) over a set of cases (defaults, options, tiny boxes, empty images, a batch
   without boxes).
2. Time (float32, 2 threads, interleaved rounds, medians) of forward + backward, with ``validate=True``
   (default) and ``validate=False``.
3. Peak extra memory of one forward + backward (growth of the peak RSS in a fresh process, after one
   warm-up step), and aten ops / host syncs dispatched per step (:class:`detloss.profiling.DispatchCounter`,
   views not counted).

Cases: B = 16, 640 px, C = 80, 12 boxes per image; B = 8, 500 boxes per image (dense, small boxes);
xView-style: B = 2, 5,000 boxes per image (C = 60). ultralytics is AGPL-3.0: it is only called here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace

import torch
from torch import nn

from detloss.criteria import YOLOv8Loss

STRIDES = (8, 16, 32)

CASES = {
    # name: (batch, image size, classes, boxes per image, min box side px, max box side px)
    "b16-12": (16, 640, 80, 12, 8, 320),
    "b8-500": (8, 640, 80, 500, 6, 64),
    "xview-5000": (2, 640, 60, 5000, 3, 40),
}


def make_inputs(b, size, c, n, lo, hi, reg_max=16, seed=0, dtype=torch.float32, empty=()):
    g = torch.Generator().manual_seed(seed)
    preds = []
    for s in STRIDES:
        h = size // s
        box = torch.randn(b, 4 * reg_max, h, h, generator=g)
        cls = torch.randn(b, c, h, h, generator=g) - 3.0
        preds.append(torch.cat((box, cls), 1).to(dtype).requires_grad_())
    targets = []
    for i in range(b):
        k = 0 if i in empty else n
        wh = lo + (hi - lo) * torch.rand(k, 2, generator=g, dtype=torch.float64)
        xy = torch.rand(k, 2, generator=g, dtype=torch.float64) * (size - wh)
        boxes = torch.cat((xy, xy + wh), 1).to(dtype)
        targets.append({"boxes": boxes, "labels": torch.randint(0, c, (k,), generator=g)})
    return preds, targets


class _FakeModel(nn.Module):
    """What ``v8DetectionLoss.__init__`` reads from a model: args, model[-1] (stride, nc, reg_max)."""

    def __init__(self, nc, reg_max, box, cls, dfl):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))
        self.args = SimpleNamespace(box=box, cls=cls, dfl=dfl)
        self.model = [
            SimpleNamespace(stride=torch.tensor(STRIDES, dtype=torch.float32), nc=nc, reg_max=reg_max)
        ]


def ultralytics_loss(nc, reg_max=16, box=7.5, cls=0.5, dfl=1.5, topk=10):
    from ultralytics.utils.loss import v8DetectionLoss

    crit = v8DetectionLoss(_FakeModel(nc, reg_max, box, cls, dfl), tal_topk=topk)

    def run(preds, targets, size):
        r = reg_max
        batch_idx, labels, boxes = [], [], []
        for i, t in enumerate(targets):
            bx = t["boxes"].to(torch.get_default_dtype())
            xywh = torch.cat(((bx[:, :2] + bx[:, 2:]) / 2, bx[:, 2:] - bx[:, :2]), 1) / size
            batch_idx.append(torch.full((len(bx),), float(i)))
            labels.append(t["labels"].to(torch.get_default_dtype()))
            boxes.append(xywh)
        batch = {
            "batch_idx": torch.cat(batch_idx),
            "cls": torch.cat(labels)[:, None],
            "bboxes": torch.cat(boxes),
        }
        out = {
            "boxes": torch.cat([p[:, : 4 * r].flatten(2) for p in preds], 2),
            "scores": torch.cat([p[:, 4 * r :].flatten(2) for p in preds], 2),
            "feats": preds,
        }
        total, _ = crit(out, batch)
        return total.sum(), {
            "box": total[0] / len(targets),
            "cls": total[1] / len(targets),
            "dfl": total[2] / len(targets),
        }

    return run


def ours_loss(nc, reg_max=16, validate=True, **kw):
    crit = YOLOv8Loss(nc, STRIDES, reg_max, validate=validate, **kw)

    def run(preds, targets, size):
        out = crit(preds, targets)
        return out.total, out.components

    return run


# ------------------------------------------------------------------------------------------ agreement

AGREE = [
    # (label, b, size, c, n, lo, hi, reg_max, options, empty images)
    ("defaults 640 px, 12 boxes", 4, 640, 80, 12, 8, 320, 16, {}, ()),
    ("256 px, 40 boxes, C=5", 3, 256, 5, 40, 4, 120, 16, {}, ()),
    ("tiny boxes (widening)", 2, 256, 3, 30, 1, 14, 16, {}, ()),
    ("empty images", 4, 256, 7, 10, 8, 100, 16, {}, (1, 3)),
    ("no box at all", 2, 256, 4, 0, 8, 100, 16, {}, ()),
    (
        "topk 5, reg_max 8, gains",
        2,
        320,
        6,
        15,
        8,
        200,
        8,
        {"topk": 5, "box": 1.0, "cls": 2.0, "dfl": 0.5},
        (),
    ),
    ("dense 300 boxes", 2, 320, 10, 300, 4, 60, 16, {}, ()),
]


def agreement(seeds=3):
    torch.set_default_dtype(torch.float64)
    rows = []
    for label, b, size, c, n, lo, hi, r, opts, empty in AGREE:
        worst = {"box": 0.0, "cls": 0.0, "dfl": 0.0, "total": 0.0, "grad": 0.0}
        for seed in range(seeds):
            preds, targets = make_inputs(b, size, c, n, lo, hi, r, seed, torch.float64, empty)
            ul = ultralytics_loss(c, r, **{k: opts[k] for k in opts if k in ("box", "cls", "dfl", "topk")})
            ours = ours_loss(c, r, **opts)
            res = []
            for fn in (ul, ours):
                total, comps = fn(preds, targets, size)
                grads = torch.autograd.grad(total, preds)
                res.append((total.detach(), {k: v.detach() for k, v in comps.items()}, grads))
            (t0, c0, g0), (t1, c1, g1) = res
            for k in ("box", "cls", "dfl"):
                worst[k] = max(worst[k], _rel(c1[k], c0[k]))
            worst["total"] = max(worst["total"], _rel(t1, t0))
            for a, bb in zip(g1, g0, strict=True):
                worst["grad"] = max(
                    worst["grad"], float((a - bb).abs().max() / bb.abs().max().clamp(min=1e-300))
                )
        rows.append((label, worst))
    torch.set_default_dtype(torch.float32)
    return rows


def _rel(a, b):
    return float((a - b).abs() / b.abs().clamp(min=1e-300)) if b != 0 else float((a - b).abs())


# -------------------------------------------------------------------------------------- time, memory


def step_fn(case, impl):
    b, size, c, n, lo, hi = CASES[case]
    preds, targets = make_inputs(b, size, c, n, lo, hi)
    fn = {
        "ultralytics": lambda: ultralytics_loss(c),
        "ours": lambda: ours_loss(c),
        "ours nv": lambda: ours_loss(c, validate=False),
    }[impl]()

    def step():
        total, _ = fn(preds, targets, size)
        torch.autograd.grad(total, preds)

    return step


def timing(case, impls, rounds):
    steps = {i: step_fn(case, i) for i in impls}
    for s in steps.values():
        s()  # warm-up
    times = {i: [] for i in impls}
    for _ in range(rounds):
        for i, s in steps.items():
            t = time.perf_counter()
            s()
            times[i].append(time.perf_counter() - t)
    return {i: statistics.median(v) for i, v in times.items()}


def _status_kib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def memory_worker(case, impl):
    torch.set_num_threads(2)
    step = step_fn(case, impl)
    step()
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    step()
    return (_status_kib("VmHWM") - before) / 1024.0


def memory(case, impl):
    cmd = [sys.executable, __file__, "--memory-worker", case, impl]
    out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
    try:
        return float(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        print(out.stderr[-2000:], file=sys.stderr)
        return None


def op_counts(case, impl):
    from detloss.profiling import DispatchCounter

    step = step_fn(case, impl)
    step()
    with DispatchCounter() as c:
        step()
    return c.ops, c.syncs


def compile_time(case="b16-12"):
    b, size, c, n, lo, hi = CASES[case]
    from detloss.assign import pad_targets

    preds, targets = make_inputs(b, size, c, n, lo, hi)
    padded = pad_targets(targets, c, validate=False)  # the padding itself stays outside the graph
    crit = torch.compile(YOLOv8Loss(c, STRIDES, validate=False), fullgraph=True)
    t = time.perf_counter()
    out = crit(preds, padded)
    torch.autograd.grad(out.total, preds)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--memory-worker", nargs=2)
    ap.add_argument("--skip-agree", action="store_true")
    ap.add_argument("--skip-time", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.memory_worker:
        print(memory_worker(*args.memory_worker))
        return
    torch.set_num_threads(2)
    report = {}
    if not args.skip_agree:
        print("agreement with ultralytics 8.4.190 (float64, max relative error over 3 seeds)")
        print(f"{'case':32s} {'box':>9s} {'cls':>9s} {'dfl':>9s} {'total':>9s} {'grad':>9s}")
        rows = agreement()
        for label, w in rows:
            print(f"{label:32s} " + " ".join(f"{w[k]:9.1e}" for k in ("box", "cls", "dfl", "total", "grad")))
        report["agreement"] = {label: w for label, w in rows}
        _dump(report, args.json)
    for case in args.cases.split(","):
        impls = ["ultralytics", "ours", "ours nv"]
        line = {"case": case}
        if not args.skip_time:
            t = timing(case, impls, args.rounds if case != "xview-5000" else 2)
            line["ms"] = {k: v * 1e3 for k, v in t.items()}
            line["speedup"] = t["ultralytics"] / t["ours"]
        if not args.skip_memory:
            line["peak_mb"] = {i: memory(case, i) for i in ("ultralytics", "ours")}
        line["ops_syncs"] = {i: op_counts(case, i) for i in impls} if case != "xview-5000" else None
        print(json.dumps(line), flush=True)
        report[case] = line
        _dump(report, args.json)
    if args.compile:
        report["compile_s"] = compile_time()
        print("torch.compile(fullgraph=True) first fwd+bwd, b16-12:", f"{report['compile_s']:.1f} s")
    _dump(report, args.json)


def _dump(report, path):
    if path:
        with open(path, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
