"""detloss's benchmark: forward + backward against its peers, side by side in one process.

    PYTHONPATH=src python benchmarks/bench.py [--sizes 1e4,1e5] [--kinds giou,focal] [--plot PNG]
    PYTHONPATH=src python benchmarks/bench.py --criteria [yolov5,ssd] [--device cuda --mode reduce-overhead]
    PYTHONPATH=src python benchmarks/bench.py --ports [yolov3-416,ssd300]

Three tables (``PYTHONPATH=src`` is not needed where detloss is installed, ``pip install -e .``):

**Losses** (default). Each case times ``torch.autograd.grad(loss, pred)`` with ``torch.utils.benchmark``
(medians of interleaved rounds, 2 threads by default) for each implementation of the same loss:

- ``ours``: detloss eager (the default path: fused kernels, hand-derived backward);
- ``ours+compile``: the same kernels under ``torch.compile`` (:func:`detloss.set_compile`); its first
  call (compilation, or loading inductor's disk cache) is reported separately as warm-up;
- ``naive``: the plain eager formula of ``tests/reference/naive.py``, written the way torchvision
  writes it (autograd keeps every intermediate);
- ``torchvision``: ``torchvision.ops`` where installed and where it has the loss, else "skipped";
- ``floor``: ``a + b`` over two tensors of the inputs' size (what any loss must at least read and
  write), the memory-bandwidth floor.

Peak extra memory of one forward + backward is measured per implementation in a fresh subprocess
(growth of the peak resident set over the resident set before the step, after one warm-up step;
large blocks are mmap-allocated there so that freed pages cannot hide a later allocation).

**Criteria** (``--criteria``): every criterion of ``tests/cases.py`` (the cases the test suite counts
and compiles) at its training size: ``ops`` (aten ops, kernel launches on a GPU) and ``syncs`` (ops
the host must wait for) of one forward + backward counted by :class:`detloss.profiling.DispatchCounter`
with ``validate=False`` (and ``syncs`` with ``validate=True``); eager and
``torch.compile(crit, fullgraph=True, dynamic=True)`` medians in ms, the cold compile in seconds; the
extra CUDA memory of one eager step (CUDA only).

**Loop ports** (``--ports``): the criteria against the naive per-image / per-box loop ports of the
originals that the test suite checks them against (``tests/reference/yolov3.py``, ``yolov4.py``,
``yolov5.py``, ``ssd.py``: tensorflow-yolov3, yolov4-tiny-tf2, ultralytics/yolov5
``ComputeLoss``, SSD.TensorFlow, written without detloss), timed with ``time.perf_counter`` in
interleaved rounds: ``ours`` (``validate=True``), ``ours nv`` (``validate=False``), ``pad``
(:func:`detloss.assign.pad_targets` alone, validated / not), ``naive`` (a port slower than ``--slow``
seconds is timed once, by its first call: "1 run"), ``ratio`` = naive / ours, and ``Δloss``, ``Δgrad``:
the relative difference of the total loss and max |Δgrad| / max |grad| between ours and the port.
The YOLOv3/v4 ports build their label arrays in NumPy float64, so their loss runs in float64 whatever
the heads' dtype; the YOLOv5 and SSD ports run in the heads' float32.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.*

import torch  # noqa: E402
from torch import Tensor  # noqa: E402
from torch.utils import benchmark  # noqa: E402

import detloss  # noqa: E402
from benchmarks.peak_memory import in_fresh_process, peak_extra_mb  # noqa: E402
from detloss.assign import pad_targets  # noqa: E402
from detloss.iou import IOU_KINDS  # noqa: E402
from tests.cases import BATCH, BOXES_PER_IMAGE, CriterionCase, cases, count, fwd_bwd  # noqa: E402
from tests.reference.naive import MPDIOU_IMAGE, naive_focal_loss, naive_iou_loss  # noqa: E402

Inputs = dict[str, Tensor]
Targets = list[dict[str, Tensor]]
IMPLS = ("ours", "ours+compile", "naive", "torchvision", "floor")
Step = Callable[[Inputs], Tensor]  # forward: returns a scalar loss whose graph reaches inputs["pred"]


# =================================================================================================
# Losses against their peers
# =================================================================================================


@dataclass
class LossCase:
    """One loss: how to build inputs of size ``n`` and the implementations to time.

    ``impls`` maps an implementation name to a forward returning a scalar loss, or to ``None`` when
    the implementation is unavailable (listed as skipped). ``floor_shape(n)`` is the shape of the
    tensors whose ``a + b`` is the bandwidth floor of the case.
    """

    name: str
    sizes: tuple[int, ...]
    make_inputs: Callable[[int, torch.Generator], Inputs]
    impls: dict[str, Step | None]
    floor_shape: Callable[[int], tuple[int, ...]]
    label: Callable[[int], str] = field(default=lambda n: size_label(n))


def size_label(n: int) -> str:
    """1e4 for 10000, 2.5e5 for 250000, 300 for 300."""
    if n < 1000:
        return str(n)
    mant, exp = f"{n:.1e}".split("e")
    return f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"


def torchvision_ops():
    """``torchvision.ops``, or ``None`` where torchvision is missing or built against another torch."""
    try:
        from torchvision import ops  # an optional peer, never a dependency
    except Exception:
        return None
    return ops


TV_IOU = {
    "giou": "generalized_box_iou_loss",
    "diou": "distance_box_iou_loss",
    "ciou": "complete_box_iou_loss",
}
# the YOLO community's modifiers, timed on one kind each (no peer library has them)
VARIANTS: dict[str, dict[str, object]] = {
    "ciou+alpha": {"alpha": 3.0},
    "ciou+inner": {"inner_ratio": 0.8},
    "ciou+focaler": {"focaler": (0.0, 0.95)},
}


def box_inputs(n: int, gen: torch.Generator) -> Inputs:
    """``pred`` and ``target`` ``(n, 4)`` xyxy boxes in [0, 672]², overlapping or not; ``pred`` requires
    grad."""
    xy = torch.rand(n, 2, generator=gen) * 600
    wh = torch.rand(n, 2, generator=gen) * 60 + 1
    target = torch.cat([xy, xy + wh], -1)
    pred = target + torch.randn(n, 4, generator=gen) * 8
    pred = torch.cat([pred[:, :2], torch.maximum(pred[:, 2:], pred[:, :2] + 0.5)], -1)
    return {"pred": pred.requires_grad_(), "target": target}


def focal_inputs(n: int, gen: torch.Generator) -> Inputs:
    """``pred`` ``(n, 80)`` logits (requires grad) and ``target`` ``(n, 80)`` 0/1 labels, 2 % positive."""
    logits = torch.randn(n, 80, generator=gen) * 3
    targets = (torch.rand(n, 80, generator=gen) < 0.02).float()
    return {"pred": logits.requires_grad_(), "target": targets}


def _iou_case(name: str) -> LossCase:
    kind = name.partition("+")[0]
    mods = dict(VARIANTS.get(name, {}))
    ops = torchvision_ops()
    tv = getattr(ops, TV_IOU[kind]) if ops is not None and kind in TV_IOU and not mods else None
    ours_mods = {**mods, **({"image_size": MPDIOU_IMAGE} if kind == "mpdiou" else {})}

    def ours(x: Inputs) -> Tensor:
        return detloss.iou_loss(x["pred"], x["target"], kind, validate=False, **ours_mods)

    impls: dict[str, Step | None] = {
        "ours": ours,
        "naive": lambda x: naive_iou_loss(x["pred"], x["target"], kind, **mods),
        "torchvision": None if tv is None else (lambda x: tv(x["pred"], x["target"], reduction="mean")),
    }
    return LossCase(f"iou_loss[{name}]", (10**4, 10**5, 10**6), box_inputs, impls, lambda n: (n, 4))


def _focal_case() -> LossCase:
    ops = torchvision_ops()
    tv = None if ops is None else ops.sigmoid_focal_loss
    impls: dict[str, Step | None] = {
        "ours": lambda x: detloss.sigmoid_focal_loss(x["pred"], x["target"], validate=False),
        "naive": lambda x: naive_focal_loss(x["pred"], x["target"]),
        "torchvision": None if tv is None else (lambda x: tv(x["pred"], x["target"], reduction="mean")),
    }
    label = lambda n: f"({size_label(n)}, 80)"  # noqa: E731
    return LossCase("sigmoid_focal_loss", (10**4, 10**5), focal_inputs, impls, lambda n: (n, 80), label)


@functools.cache
def loss_cases() -> dict[str, LossCase]:
    """Every IoU kind, the modifiers of :data:`VARIANTS` and the sigmoid focal loss, by name."""
    out = {f"iou_loss[{k}]": _iou_case(k) for k in (*IOU_KINDS, *VARIANTS)}
    out["sigmoid_focal_loss"] = _focal_case()
    return out


def _grad_step(step: Step, x: Inputs, compiled: bool = False) -> Callable[[], None]:
    pred = x["pred"]

    def run() -> None:
        detloss.set_compile(compiled)  # implementations are interleaved: each sets its own path
        torch.autograd.grad(step(x), pred)  # no accumulation into .grad: every peer pays the same

    return run


def _interleaved_medians(
    fns: dict[str, Callable[[], object]], repeats: int, min_time: float
) -> dict[str, float]:
    """Median milliseconds per call of each function, measured in interleaved rounds.

    Every round times each function once (a block of calls lasting ~5 ms, so that timer overhead
    does not count for fast ones), so a burst of load from other processes on a shared machine
    hits every implementation alike instead of one of them.
    """
    threads = torch.get_num_threads()
    timers = {
        k: benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads) for k, fn in fns.items()
    }
    number = {k: max(1, int(0.005 / max(t.timeit(1).median, 1e-7))) for k, t in timers.items()}
    times: dict[str, list[float]] = {k: [] for k in fns}
    start, rounds = time.perf_counter(), 0
    while rounds < repeats or (time.perf_counter() - start < min_time and rounds < 100):
        for k, t in timers.items():
            times[k].append(t.timeit(number[k]).median)
        rounds += 1
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def _impl_step(case: LossCase, impl: str) -> Step | None:
    return case.impls["ours"] if impl == "ours+compile" else case.impls.get(impl)


@dataclass
class LossRow:
    """One (loss, size) of the losses table: milliseconds and MB by implementation (``None``: skipped)."""

    case: str
    size: str
    n: int
    times_ms: dict[str, float | None]
    memory_mb: dict[str, float | None] = field(default_factory=dict)
    warmup_s: float | None = None  # first call of ours+compile (compilation or cache load)


def loss_rows(
    names: Sequence[str] | None = None,
    sizes: Sequence[int] | None = None,
    repeats: int = 7,
    min_time: float = 0.2,
    threads: int = 2,
    compile: bool = True,
    memory: str = "largest",
    seed: int = 0,
    progress: Callable[[LossRow], None] | None = None,
) -> list[LossRow]:
    """Time every implementation of every loss; one :class:`LossRow` per (loss, size).

    Args:
        names: :func:`loss_cases` names (default all).
        sizes: N values replacing each case's defaults (capped at 1e5 for the (N, 80) focal case).
        repeats: minimum rounds (each times every implementation once, interleaved; medians
            reported); rounds continue until ``min_time`` seconds have passed (at most 100).
        threads: ``torch.set_num_threads``.
        compile: also time ``ours+compile``.
        memory: ``"largest"`` (peak memory at each case's largest size), ``"all"`` or ``"none"``.
        progress: called with each finished row.
    """
    all_cases = loss_cases()
    torch.set_num_threads(threads)
    rows: list[LossRow] = []
    was_compiled = detloss.compile_enabled()
    impl_names = ["ours", *(["ours+compile"] if compile else []), "naive", "torchvision"]
    try:
        for name in names or list(all_cases):
            case = all_cases[name]
            case_sizes = tuple(sizes) if sizes else case.sizes
            if name == "sigmoid_focal_loss":
                case_sizes = tuple(n for n in case_sizes if n <= 10**5) or (min(case_sizes),)
            for n in case_sizes:
                x = case.make_inputs(n, torch.Generator().manual_seed(seed))
                row = LossRow(name, case.label(n), n, {})
                fns: dict[str, Callable[[], object]] = {}
                for impl in impl_names:
                    step = _impl_step(case, impl)
                    if step is None:
                        row.times_ms[impl] = None
                        continue
                    fns[impl] = fn = _grad_step(step, x, impl == "ours+compile")
                    t0 = time.perf_counter()
                    fn()  # warm-up (compiles on first use)
                    if impl == "ours+compile":
                        row.warmup_s = time.perf_counter() - t0
                a, b = torch.rand(case.floor_shape(n)), torch.rand(case.floor_shape(n))
                fns["floor"] = lambda a=a, b=b: a + b
                row.times_ms.update(_interleaved_medians(fns, repeats, min_time))
                if memory == "all" or (memory == "largest" and n == max(case_sizes)):
                    for impl in impl_names:
                        if row.times_ms.get(impl) is not None:
                            row.memory_mb[impl] = measure_memory(name, n, impl, threads, seed)
                rows.append(row)
                if progress is not None:
                    progress(row)
    finally:
        detloss.set_compile(was_compiled)
    return rows


def measure_memory(case: str, n: int, impl: str, threads: int = 2, seed: int = 0) -> float | None:
    """Peak extra memory (MB) of one forward + backward, in a fresh Python process
    (:mod:`benchmarks.peak_memory`; ``None`` on failure)."""
    try:
        return in_fresh_process(__file__, [case, n, impl, threads, seed])
    except (subprocess.SubprocessError, ValueError, IndexError):
        return None


def _memory_worker(case_name: str, n: int, impl: str, threads: int, seed: int) -> float:
    torch.set_num_threads(threads)
    case = loss_cases()[case_name]
    step = _impl_step(case, impl)
    if step is None:
        raise ValueError(f"{impl} is not available for {case_name}")
    fn = _grad_step(step, case.make_inputs(n, torch.Generator().manual_seed(seed)), impl == "ours+compile")
    return peak_extra_mb(fn)


def _fmt_ms(t: float | None) -> str:
    if t is None:
        return "skipped"
    return f"{t:.3g} ms" if t >= 1 else f"{1e3 * t:.3g} µs"


def _fmt_ratio(a: float | None, b: float | None) -> str:
    return "–" if a is None or b is None else f"{a / b:.2g}×" if a / b < 10 else f"{a / b:.0f}×"


def best_ours(row: LossRow) -> float | None:
    """The time of the path a user enabling compilation gets (compiled if measured, else eager)."""
    return row.times_ms.get("ours+compile") or row.times_ms.get("ours")


def loss_table(rows: Sequence[LossRow]) -> str:
    """One Markdown table: times, ratios peer / ours (ours = compiled when measured), ours / floor,
    peak extra memory, compile warm-up."""
    impls = [k for k in IMPLS if any(k in r.times_ms for r in rows)]
    ratios = ["naive/ours", "tv/ours", "ours/floor"]
    head = ["case", "N", *impls, *ratios, "mem ours", "mem naive", "mem tv", "warm-up"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ours = best_ours(r)
        mem_key = "ours+compile" if "ours+compile" in r.memory_mb else "ours"

        def mem(k: str, r: LossRow = r) -> str:
            v = r.memory_mb.get(k)
            return "–" if v is None else f"{v:.0f} MB" if v >= 10 else f"{v:.2g} MB"

        cells = [
            r.case,
            r.size,
            *(_fmt_ms(r.times_ms.get(k)) if k in r.times_ms else "–" for k in impls),
            _fmt_ratio(r.times_ms.get("naive"), ours),
            _fmt_ratio(r.times_ms.get("torchvision"), ours),
            _fmt_ratio(ours, r.times_ms.get("floor")),
            mem(mem_key),
            mem("naive"),
            mem("torchvision"),
            "–" if r.warmup_s is None else f"{r.warmup_s:.2g} s",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def environment() -> dict[str, object]:
    """Date, torch/torchvision versions, CPU model and threads of this run."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    tv = "not installed"
    if torchvision_ops() is not None:
        import torchvision

        tv = torchvision.__version__
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "torch": torch.__version__,
        "torchvision": tv,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }


def plot(rows: Sequence[LossRow], path: str) -> None:
    """Time vs N on log axes, one panel per loss (matplotlib: ``pip install detloss[bench]``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r.case for r in rows))
    cols = min(4, len(names))
    nrows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3.2 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        sub = [r for r in rows if r.case == name]
        for impl in IMPLS:
            pts = [(r.n, r.times_ms[impl]) for r in sub if r.times_ms.get(impl) is not None]
            if pts:
                style = {"ls": "--" if impl == "floor" else "-", "color": f"C{IMPLS.index(impl)}"}
                ax.plot(*zip(*pts, strict=True), marker="o", label=impl, **style)
        ax.set(xscale="log", yscale="log", title=name, xlabel="N", ylabel="ms (fwd+bwd)")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# =================================================================================================
# Criteria: launches, host syncs, eager and compiled
# =================================================================================================


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn: Callable[[], object], device: torch.device, repeats: int, min_time: float) -> float:
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        if len(times) >= 10 * repeats:
            break
    return 1e3 * statistics.median(times)


def _peak_mib(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak extra CUDA memory of one call (the allocator's peak above what was allocated before);
    ``None`` on the CPU, where the process's resident set hides reused pages."""
    if device.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    _sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


@dataclass
class CriterionRow:
    """One criterion of the criteria table."""

    name: str
    ops: int
    syncs: int
    syncs_validate: int
    eager_ms: float
    compiled_ms: float | None
    compile_s: float | None
    peak_mib: float | None


def criterion_row(
    case: CriterionCase,
    *,
    device: str = "cpu",
    compile: bool = True,
    mode: str | None = None,
    repeats: int = 7,
    min_time: float = 0.2,
) -> CriterionRow:
    """Counts on the CPU; times (and CUDA peak memory) on ``device``."""
    c0, c1 = count(case, False), count(case, True)
    dev = torch.device(device)
    crit = case.build(False).to(dev)
    preds, targets = case.inputs(torch.Generator().manual_seed(0), (BOXES_PER_IMAGE,), torch.float32, dev)
    eager = _median_ms(lambda: fwd_bwd(crit, preds, targets), dev, repeats, min_time)
    peak = _peak_mib(lambda: fwd_bwd(crit, preds, targets), dev)
    compiled_ms = compile_s = None
    if compile:
        torch._dynamo.reset()
        compiled = torch.compile(crit, fullgraph=True, dynamic=True, mode=mode)
        t0 = time.perf_counter()
        fwd_bwd(compiled, preds, targets)
        _sync(dev)
        compile_s = time.perf_counter() - t0
        compiled_ms = _median_ms(lambda: fwd_bwd(compiled, preds, targets), dev, repeats, min_time)
    return CriterionRow(case.name, c0.ops, c0.syncs, c1.syncs, eager, compiled_ms, compile_s, peak)


def criterion_rows(
    names: Sequence[str] | None = None,
    *,
    progress: Callable[[CriterionRow], None] | None = None,
    **kwargs,
) -> list[CriterionRow]:
    """:func:`criterion_row` of the cases whose name contains one of ``names`` (all by default)."""
    rows = []
    for case in cases():
        if names and not any(n.lower() in case.name.lower() for n in names):
            continue
        rows.append(criterion_row(case, **kwargs))
        if progress is not None:
            progress(rows[-1])
    return rows


def criterion_table(rows: Sequence[CriterionRow]) -> str:
    """The criteria rows as a Markdown table."""

    def f(x: float | None, spec: str) -> str:
        return "–" if x is None else format(x, spec)

    lines = [
        "| criterion | ops | syncs | syncs (validate) | eager ms | compiled ms | eager / compiled "
        "| compile s | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = None if r.compiled_ms is None else r.eager_ms / r.compiled_ms
        lines.append(
            f"| {r.name} | {r.ops} | {r.syncs} | {r.syncs_validate} | {f(r.eager_ms, '.1f')} "
            f"| {f(r.compiled_ms, '.1f')} | {f(ratio, '.2f')} | {f(r.compile_s, '.1f')} "
            f"| {f(r.peak_mib, '.0f')} |"
        )
    return "\n".join(lines)


# =================================================================================================
# Criteria against the tests' loop ports of the originals (tests/reference/)
# =================================================================================================


@dataclass
class PortCase:
    """One criterion and its loop port on one batch."""

    name: str
    preds: list[Tensor]  # the tensors gradients are taken with respect to
    targets: Targets
    num_classes: int  # for pad_targets
    ours: Callable[[bool], Tensor]  # validate -> total loss
    naive: Callable[[], Tensor]  # total loss of the loop port


def _port_yolov3(size: int, b: int = 16, c: int = 80, n: int = 20) -> PortCase:
    from detloss.criteria import YOLOv3Loss
    from tests.reference.yolov3 import ref_loss

    preds, targets = _yolo_batch(torch.Generator().manual_seed(size), b, c, size, (8, 16, 32), n)
    crit = {v: YOLOv3Loss(c, validate=v) for v in (True, False)}
    return PortCase(
        f"YOLOv3Loss B={b} {size}² C={c} {n} boxes/img",
        preds,
        targets,
        c,
        lambda v: crit[v](preds, targets).total,
        lambda: sum(ref_loss(preds, targets, c)),
    )


def _port_yolov4_tiny(size: int = 416, b: int = 16, c: int = 80, n: int = 20) -> PortCase:
    from detloss.criteria import YOLOv4Loss
    from tests.reference.yolov4 import ref_loss

    preds, targets = _yolo_batch(torch.Generator().manual_seed(size + 4), b, c, size, (32, 16), n)
    crit = {v: YOLOv4Loss(c, "tiny", validate=v) for v in (True, False)}
    return PortCase(
        f"YOLOv4Loss tiny B={b} {size}² C={c} {n} boxes/img",
        preds,
        targets,
        c,
        lambda v: crit[v](preds, targets).total,
        # the port with CIoU's α held constant, as detloss does (the TF original differentiates it)
        lambda: ref_loss(preds, targets, c, alpha_grad=False),
    )


def _port_yolov5(size: int = 640, b: int = 16, c: int = 80, n: int = 20) -> PortCase:
    from detloss.criteria import YOLOV5_ANCHORS, YOLOv5Loss
    from tests.reference.yolov5 import HYP, reference_loss

    preds, targets = _yolo_batch(torch.Generator().manual_seed(size + 5), b, c, size, (8, 16, 32), n)
    crit = {v: YOLOv5Loss(c, validate=v) for v in (True, False)}
    hyp = HYP
    return PortCase(
        f"YOLOv5Loss B={b} {size}² C={c} {n} boxes/img",
        preds,
        targets,
        c,
        lambda v: crit[v](preds, targets).total,
        lambda: reference_loss(preds, targets, c, YOLOV5_ANCHORS, (8, 16, 32), hyp)[0],
    )


def _port_ssd300(b: int = 32, c: int = 20, n: int = 10) -> PortCase:
    from detloss.criteria import SSDLoss
    from tests.cases import ssd300_priors, ssd_targets
    from tests.reference.ssd import ref_loss

    gen = torch.Generator().manual_seed(300)
    priors = ssd300_priors()
    loc = torch.randn(b, priors.shape[0], 4, generator=gen).requires_grad_()
    conf = torch.randn(b, priors.shape[0], c + 1, generator=gen).requires_grad_()
    targets = ssd_targets(gen, b, (n,), c)
    crit = {v: SSDLoss(c, priors, validate=v) for v in (True, False)}
    return PortCase(
        f"SSDLoss SSD300 B={b} {priors.shape[0]} priors C={c + 1} {n} boxes/img",
        [loc, conf],
        targets,
        c,
        lambda v: crit[v]((loc, conf), targets).total,
        lambda: sum(ref_loss(loc, conf, targets, priors)[:2]),  # conf + loc (the third: per-image shares)
    )


def _yolo_batch(
    gen: torch.Generator, b: int, c: int, size: int, strides: tuple[int, ...], n: int
) -> tuple[list[Tensor], Targets]:
    from tests.cases import yolo_targets

    preds = [
        torch.randn(b, 3 * (5 + c), size // s, size // s, generator=gen).requires_grad_() for s in strides
    ]
    return preds, yolo_targets(gen, b, size, (n,), c)


PORTS: dict[str, Callable[[], PortCase]] = {
    "yolov3-640": lambda: _port_yolov3(640),
    "yolov3-416": lambda: _port_yolov3(416),
    "yolov5-640": _port_yolov5,
    "ssd300": _port_ssd300,
    "yolov4tiny-416": _port_yolov4_tiny,
}


@dataclass
class PortRow:
    """One criterion of the loop-ports table: medians in ms, and the differences from the port."""

    name: str
    ours: float
    ours_nv: float
    pad: float
    pad_nv: float
    naive: float
    naive_runs: int
    d_loss: float
    d_grad: float


def _grads(case: PortCase, fn: Callable[[], Tensor]) -> tuple[Tensor, tuple[Tensor, ...]]:
    loss = fn()
    return loss.detach(), torch.autograd.grad(loss, case.preds)


def _rel_diffs(
    a: tuple[Tensor, tuple[Tensor, ...]], b: tuple[Tensor, tuple[Tensor, ...]]
) -> tuple[float, float]:
    """Relative difference of the losses, and max |Δgrad| / max |grad_b| over all heads."""
    (la, ga), (lb, gb) = a, b
    d_loss = float(((la.double() - lb.double()).abs() / lb.double().abs()).item())
    d_grad = max(float((x.double() - y.double()).abs().max()) for x, y in zip(ga, gb, strict=True))
    scale = max(float(y.double().abs().max()) for y in gb)
    return d_loss, d_grad / scale


def _rounds(
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


def port_row(case: PortCase, repeats: int = 7, slow_s: float = 5.0) -> PortRow:
    """Times of ours (validated or not), of ``pad_targets`` and of the loop port, and their differences."""
    t0 = time.perf_counter()
    ref = _grads(case, case.naive)  # also the warm-up of the port
    first = time.perf_counter() - t0
    d_loss, d_grad = _rel_diffs(_grads(case, lambda: case.ours(True)), ref)
    _grads(case, lambda: case.ours(False))  # warm-up
    fns: dict[str, Callable[[], object]] = {
        "ours": lambda: _grads(case, lambda: case.ours(True)),
        "ours_nv": lambda: _grads(case, lambda: case.ours(False)),
        "pad": lambda: pad_targets(case.targets, case.num_classes, validate=True),
        "pad_nv": lambda: pad_targets(case.targets, case.num_classes, validate=False),
        "naive": lambda: _grads(case, case.naive),
    }
    slow = first > slow_s  # a port taking minutes per call is timed once, by its first call
    t = _rounds(fns, repeats, {"naive": [first]} if slow else {})
    return PortRow(case.name, **t, naive_runs=1 if slow else repeats, d_loss=d_loss, d_grad=d_grad)


def port_table(rows: Sequence[PortRow]) -> str:
    """The loop-ports rows as a Markdown table."""

    def fmt(ms: float) -> str:
        return f"{ms:.3g}" if ms < 1000 else f"{ms:.0f}"

    head = ["case", "ours ms", "ours nv ms", "pad ms (val / nv)", "naive ms", "ratio", "Δloss", "Δgrad"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r.name,
            fmt(r.ours),
            fmt(r.ours_nv),
            f"{r.pad:.3g} / {r.pad_nv:.3g}",
            fmt(r.naive) + (" (1 run)" if r.naive_runs == 1 else ""),
            f"{r.naive / r.ours:.1f}×",
            f"{r.d_loss:.1e}",
            f"{r.d_grad:.1e}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# =================================================================================================
# Command line
# =================================================================================================


def _int_list(text: str) -> list[int]:
    return [int(float(v)) for v in text.split(",") if v]


def _names(text: str | None) -> list[str] | None:
    return [n for n in text.split(",") if n] if text else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmarks/bench.py",
        description="Time detloss against torchvision.ops, the naive formulas and the bandwidth floor "
        "(default), or the criteria (--criteria, --ports).",
    )
    p.add_argument("--sizes", type=_int_list, default=None, help="comma-separated N, e.g. 1e4,1e5")
    p.add_argument(
        "--kinds",
        default=None,
        help=f"comma-separated: {','.join((*IOU_KINDS, *VARIANTS))},focal (default all)",
    )
    p.add_argument("--repeats", type=int, default=7, help="minimum timing rounds (default 7)")
    p.add_argument("--min-time", type=float, default=0.2, help="minimum seconds per median")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile path")
    p.add_argument("--memory", choices=("largest", "all", "none"), default="largest")
    p.add_argument("--json", metavar="PATH", help="write the losses table as JSON")
    p.add_argument("--plot", metavar="PATH", help="draw time vs N (needs matplotlib)")
    table = p.add_mutually_exclusive_group()
    table.add_argument(
        "--criteria",
        nargs="?",
        const="",
        default=None,
        metavar="NAMES",
        help="the criteria table instead (optionally comma-separated name parts, e.g. yolov5,ssd)",
    )
    table.add_argument(
        "--ports",
        nargs="?",
        const="",
        default=None,
        metavar="NAMES",
        help=f"the criteria against the tests' loop ports instead (comma-separated, from {', '.join(PORTS)})",
    )
    p.add_argument("--device", default="cpu", help="--criteria: device to time on (cpu, cuda)")
    p.add_argument("--mode", default=None, help="--criteria: torch.compile mode, e.g. reduce-overhead")
    p.add_argument("--slow", type=float, default=5.0, help="--ports: slower ports are timed by one call")
    return p


def _losses(args: argparse.Namespace) -> int:
    kinds = _names(args.kinds)
    names = None
    if kinds is not None:
        alias = {"focal": "sigmoid_focal_loss", **{k: f"iou_loss[{k}]" for k in (*IOU_KINDS, *VARIANTS)}}
        names = [alias.get(k, k) for k in kinds]
        unknown = [n for n in names if n not in loss_cases()]
        if unknown:
            print(f"unknown case(s) {unknown}; known: {', '.join((*IOU_KINDS, *VARIANTS))}, focal")
            return 2
    env = environment()
    print(f"benchmarks/bench.py — {env['date']}, torch {env['torch']}, torchvision {env['torchvision']}")
    print(f"CPU {env['cpu']} ({env['cores']} cores), {args.threads} threads, float32, fwd+bwd medians\n")
    rows = loss_rows(
        names,
        args.sizes,
        repeats=args.repeats,
        min_time=args.min_time,
        threads=args.threads,
        compile=args.compile,
        memory=args.memory,
        progress=lambda r: print(f"  done {r.case} {r.size}", file=sys.stderr, flush=True),
    )
    print(loss_table(rows))
    print(
        "\nours = the compiled path when measured (else eager); ratios peer/ours > 1 mean detloss is faster;"
        "\nfloor = a + b over the inputs' bytes; mem = peak extra RSS of one step in a fresh process;"
        "\nwarm-up = first call of ours+compile (compilation, or inductor's disk cache)."
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "rows": [asdict(r) for r in rows]}, f, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        try:
            plot(rows, args.plot)
            print(f"wrote {args.plot}")
        except ImportError as e:
            print(f"--plot needs matplotlib (pip install detloss[bench]): {e}")
    return 0


def _criteria(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    print(
        f"detloss criteria — torch {torch.__version__}, {args.device}, {args.threads} threads, "
        f"B={BATCH}, {BOXES_PER_IMAGE} boxes per image, float32, fwd+bwd medians\n"
    )
    rows = criterion_rows(
        _names(args.criteria),
        device=args.device,
        compile=args.compile,
        mode=args.mode,
        repeats=args.repeats,
        min_time=args.min_time,
        progress=lambda r: print(f"  done {r.name}", file=sys.stderr, flush=True),
    )
    if not rows:
        print(f"no criterion matches {args.criteria!r}; known: {', '.join(c.name for c in cases())}")
        return 2
    print(criterion_table(rows))
    print(
        "\nops = aten ops dispatched (kernel launches on a GPU; views not counted), syncs = those "
        "needing the host,\nvalidate=False (and True); compiled = torch.compile(crit, fullgraph=True, "
        "dynamic=True); compile s = its first call.\nThe yolov5 package's ComputeLoss: "
        "benchmarks/compare_yolov5.py in an environment that has it."
    )
    return 0


def _ports(args: argparse.Namespace) -> int:
    keys = _names(args.ports) or list(PORTS)
    unknown = [k for k in keys if k not in PORTS]
    if unknown:
        print(f"unknown port(s) {unknown}; known: {', '.join(PORTS)}")
        return 2
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, float32 heads, eager (no compile)")
    rows = []
    for key in keys:
        rows.append(port_row(PORTS[key](), args.repeats, args.slow))
        r = rows[-1]
        print(f"  done {key}: ours {r.ours:.3g} ms, naive {r.naive:.3g} ms", file=sys.stderr, flush=True)
    print(port_table(rows))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.criteria is not None:
        return _criteria(args)
    if args.ports is not None:
        return _ports(args)
    return _losses(args)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--memory-worker"]:
        print(_memory_worker(*json.loads(sys.argv[2])))
    else:
        raise SystemExit(main())
