"""``detloss bench``: forward+backward timings of detloss against its peers, side by side in one run.

Every case times ``loss = f(inputs); torch.autograd.grad(loss, pred)`` with ``torch.utils.benchmark``
(medians of repeated runs, 2 threads by default) for each implementation of the same loss:

- ``ours``: detloss eager (the default path: fused kernels, hand-derived backward);
- ``ours+compile``: the same kernels under ``torch.compile`` (:func:`detloss.set_compile`); its first
  call (compilation, or loading inductor's disk cache) is reported separately as warm-up;
- ``naive``: the plain eager formula written here the way torchvision writes it (autograd keeps
  every intermediate);
- ``torchvision``: ``torchvision.ops`` where installed and where it has the loss, else "skipped";
- ``floor``: ``a + b`` over two tensors of the inputs' size (what any loss must at least read and
  write), the memory-bandwidth floor.

Peak extra memory of one forward+backward is measured per implementation in a fresh subprocess
(growth of the peak resident set over the resident set before the step, after one warm-up step;
large blocks are mmap-allocated there so that freed pages cannot hide a later allocation).

Cases live in :data:`CASES` (:func:`register_case`), so later benchmarks (criteria against naive loop
ports) add themselves without touching the runner. This module prints nothing; the CLI does.
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils import benchmark

from . import kernels
from ._extras import require
from .losses import iou_loss, sigmoid_focal_loss

Inputs = dict[str, Tensor]
MPDIOU_IMAGE = (672.0, 672.0)  # the benchmark's boxes lie in [0, 672]²
IMPLS = ("ours", "ours+compile", "naive", "torchvision", "floor")
Step = Callable[[Inputs], Tensor]  # forward: returns a scalar loss whose graph reaches inputs["pred"]


@dataclass
class Case:
    """One benchmark case: how to build inputs of size ``n`` and the implementations to time.

    ``impls`` maps an implementation name to a forward returning a scalar loss, or to ``None`` when
    the implementation is unavailable (listed as skipped). ``floor`` gives the tensors whose ``a + b``
    is the bandwidth floor of the case.
    """

    name: str
    sizes: tuple[int, ...]
    make_inputs: Callable[[int, torch.Generator], Inputs]
    impls: dict[str, Step | None]
    floor_shape: Callable[[int], tuple[int, ...]]
    label: Callable[[int], str] = field(default=lambda n: _label(n))


CASES: dict[str, Case] = {}


def _label(n: int) -> str:
    """1e4 for 10000, 2.5e5 for 250000, 300 for 300."""
    if n < 1000:
        return str(n)
    mant, exp = f"{n:.1e}".split("e")
    return f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"


def register_case(case: Case) -> Case:
    """Add a case to the registry (name must be new)."""
    if case.name in CASES:
        raise ValueError(f"benchmark case {case.name!r} is already registered")
    CASES[case.name] = case
    return case


# ----------------------------------------------------------------------------------------- peers


def _torchvision_ops():
    try:
        from torchvision import ops  # optional peer, never a dependency
    except Exception:  # not installed, or built against another torch
        return None
    return ops


def _naive_iou(boxes1: Tensor, boxes2: Tensor, eps: float) -> tuple[Tensor, ...]:
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
    xkis1, ykis1 = torch.max(x1, x1g), torch.max(y1, y1g)
    xkis2, ykis2 = torch.min(x2, x2g), torch.min(y2, y2g)
    intsct = (xkis2 - xkis1).clamp(min=0) * (ykis2 - ykis1).clamp(min=0)
    w1, h1 = (x2 - x1).clamp(min=0), (y2 - y1).clamp(min=0)
    w2, h2 = (x2g - x1g).clamp(min=0), (y2g - y1g).clamp(min=0)
    union = w1 * h1 + w2 * h2 - intsct
    return intsct / (union + eps), union, w1, h1, w2, h2


def naive_iou_loss(
    boxes1: Tensor,
    boxes2: Tensor,
    kind: str,
    eps: float = 1e-7,
    *,
    alpha: float = 1.0,
    inner_ratio: float | None = None,
    focaler: tuple[float, float] | None = None,
    image_size: tuple[float, float] = MPDIOU_IMAGE,
) -> Tensor:
    """The IoU-family loss written plainly, as torchvision's ``ops/*_loss.py`` write it (mean); the
    YOLO community's variants as their snippets write them (Wise-IoU v1, MPDIoU, and one modifier:
    Alpha-IoU ``alpha``, Inner-IoU ``inner_ratio``, Focaler-IoU ``focaler``)."""
    iou, union, w1, h1, w2, h2 = _naive_iou(boxes1, boxes2, eps)
    if inner_ratio is not None:
        def inner(b: Tensor) -> Tensor:
            c, half = (b[..., :2] + b[..., 2:]) / 2, (b[..., 2:] - b[..., :2]) * inner_ratio / 2
            return torch.cat([c - half, c + half], -1)

        term = _naive_iou(inner(boxes1), inner(boxes2), eps)[0]
    elif focaler is not None:
        term = ((iou - focaler[0]) / (focaler[1] - focaler[0])).clamp(0, 1)
    else:
        term = iou**alpha if alpha != 1 else iou
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
    if kind == "iou":
        return (1 - term).mean()
    if kind == "mpdiou":
        norm = image_size[0] ** 2 + image_size[1] ** 2
        d1, d2 = ((x1 - x1g) ** 2 + (y1 - y1g) ** 2) / norm, ((x2 - x2g) ** 2 + (y2 - y2g) ** 2) / norm
        if alpha != 1:
            d1, d2 = d1**alpha, d2**alpha
        return (1 - term + d1 + d2).mean()
    xc1, yc1 = torch.min(x1, x1g), torch.min(y1, y1g)
    xc2, yc2 = torch.max(x2, x2g), torch.max(y2, y2g)
    if kind == "wiou":
        rho2 = ((x1g + x2g - x1 - x2) / 2) ** 2 + ((y1g + y2g - y1 - y2) / 2) ** 2
        r = torch.exp(rho2 / ((xc2 - xc1) ** 2 + (yc2 - yc1) ** 2 + eps).detach())
        return (r * (1 - iou)).mean()
    if kind == "giou":
        area_c = (xc2 - xc1) * (yc2 - yc1)
        penalty = (area_c - union) / (area_c + eps)
        return (1 - term + (penalty**alpha if alpha != 1 else penalty)).mean()
    x_p, y_p = (x2 + x1) / 2, (y2 + y1) / 2
    x_g, y_g = (x1g + x2g) / 2, (y1g + y2g) / 2
    if kind == "siou":
        dx, dy = x_g - x_p, y_g - y_p
        sin2a = 2 * (dx * dy).abs() / (dx**2 + dy**2 + eps)
        gamma = 2 - sin2a
        dist = (
            2
            - torch.exp(-gamma * (dx / (xc2 - xc1 + eps)) ** 2)
            - torch.exp(-gamma * (dy / (yc2 - yc1 + eps)) ** 2)
        )
        ow = (w1 - w2).abs() / (torch.max(w1, w2) + eps)
        oh = (h1 - h2).abs() / (torch.max(h1, h2) + eps)
        shape = (1 - torch.exp(-ow)) ** 4 + (1 - torch.exp(-oh)) ** 4
        penalty = 0.5 * (dist + shape)
        return (1 - term + (penalty**alpha if alpha != 1 else penalty)).mean()
    diag = ((xc2 - xc1) ** 2) + ((yc2 - yc1) ** 2) + eps
    terms = [((x_p - x_g) ** 2 + (y_p - y_g) ** 2) / diag]
    if kind == "ciou":
        v = (4 / (torch.pi**2)) * torch.pow(torch.atan(w2 / (h2 + eps)) - torch.atan(w1 / (h1 + eps)), 2)
        with torch.no_grad():
            alpha_v = v / (1 - iou + v + eps)
        terms.append(alpha_v * v)
    elif kind == "eiou":
        terms += [(w1 - w2) ** 2 / ((xc2 - xc1) ** 2 + eps), (h1 - h2) ** 2 / ((yc2 - yc1) ** 2 + eps)]
    loss = 1 - term
    for t in terms:
        loss = loss + (t**alpha if alpha != 1 else t)
    return loss.mean()


def naive_focal_loss(inputs: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """The sigmoid focal loss written plainly, as torchvision (and fvcore) write it (mean)."""
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_t * loss).mean()


# ----------------------------------------------------------------------------------------- cases

TV_IOU = {
    "giou": "generalized_box_iou_loss",
    "diou": "distance_box_iou_loss",
    "ciou": "complete_box_iou_loss",
}
ALL_KINDS = kernels.IOU_KINDS
# the YOLO community's modifiers, timed on one kind each (no peer library has them)
VARIANTS: dict[str, dict[str, object]] = {
    "ciou+alpha": {"alpha": 3.0},
    "ciou+inner": {"inner_ratio": 0.8},
    "ciou+focaler": {"focaler": (0.0, 0.95)},
}


def _box_inputs(n: int, gen: torch.Generator) -> Inputs:
    xy = torch.rand(n, 2, generator=gen) * 600
    wh = torch.rand(n, 2, generator=gen) * 60 + 1
    target = torch.cat([xy, xy + wh], -1)
    pred = target + torch.randn(n, 4, generator=gen) * 8  # overlapping, sometimes not
    pred = torch.cat([pred[:, :2], torch.maximum(pred[:, 2:], pred[:, :2] + 0.5)], -1)
    return {"pred": pred.requires_grad_(), "target": target}


def _iou_case(name: str) -> Case:
    kind = name.partition("+")[0]
    mods = dict(VARIANTS.get(name, {}))
    ops = _torchvision_ops()
    tv = getattr(ops, TV_IOU[kind]) if ops is not None and kind in TV_IOU and not mods else None
    ours_mods = {**mods, **({"image_size": MPDIOU_IMAGE} if kind == "mpdiou" else {})}

    def ours(x: Inputs) -> Tensor:
        return iou_loss(x["pred"], x["target"], kind, validate=False, **ours_mods)

    impls: dict[str, Step | None] = {
        "ours": ours,
        "naive": lambda x: naive_iou_loss(x["pred"], x["target"], kind, **mods),
        "torchvision": None if tv is None else (lambda x: tv(x["pred"], x["target"], reduction="mean")),
    }
    return Case(f"iou_loss[{name}]", (10**4, 10**5, 10**6), _box_inputs, impls, lambda n: (n, 4))


def _focal_inputs(n: int, gen: torch.Generator) -> Inputs:
    logits = torch.randn(n, 80, generator=gen) * 3
    targets = (torch.rand(n, 80, generator=gen) < 0.02).float()
    return {"pred": logits.requires_grad_(), "target": targets}


def _focal_case() -> Case:
    ops = _torchvision_ops()
    tv = None if ops is None else ops.sigmoid_focal_loss
    impls: dict[str, Step | None] = {
        "ours": lambda x: sigmoid_focal_loss(x["pred"], x["target"], validate=False),
        "naive": lambda x: naive_focal_loss(x["pred"], x["target"]),
        "torchvision": None if tv is None else (lambda x: tv(x["pred"], x["target"], reduction="mean")),
    }
    label = lambda n: f"({_label(n)}, 80)"  # noqa: E731
    return Case("sigmoid_focal_loss", (10**4, 10**5), _focal_inputs, impls, lambda n: (n, 80), label)


def default_cases() -> None:
    """Register the loss cases (idempotent)."""
    for kind in (*ALL_KINDS, *VARIANTS):
        if f"iou_loss[{kind}]" not in CASES:
            register_case(_iou_case(kind))
    if "sigmoid_focal_loss" not in CASES:
        register_case(_focal_case())


# ----------------------------------------------------------------------------------------- timing


def _grad_step(step: Step, x: Inputs, compiled: bool = False) -> Callable[[], None]:
    pred = x["pred"]

    def run() -> None:
        kernels.set_compile(compiled)  # implementations are interleaved: each sets its own path
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


def _impl_step(case: Case, impl: str) -> Step | None:
    return case.impls["ours"] if impl == "ours+compile" else case.impls.get(impl)


@dataclass
class Row:
    case: str
    size: str
    n: int
    times_ms: dict[str, float | None]  # None: skipped
    memory_mb: dict[str, float | None] = field(default_factory=dict)
    warmup_s: float | None = None  # first call of ours+compile (compilation or cache load)


def run(
    cases: Sequence[str] | None = None,
    sizes: Sequence[int] | None = None,
    repeats: int = 7,
    min_time: float = 0.2,
    threads: int = 2,
    compile: bool = True,
    memory: str = "largest",
    seed: int = 0,
    progress: Callable[[Row], None] | None = None,
) -> list[Row]:
    """Time every implementation of every case; return one :class:`Row` per (case, size).

    Args:
        cases: registry names (default all); see :data:`CASES`.
        sizes: N values replacing each case's defaults (capped at 1e5 for the (N, 80) focal case).
        repeats: minimum rounds (each times every implementation once, interleaved; medians
            reported); rounds continue until ``min_time`` seconds have passed (at most 100).
        threads: ``torch.set_num_threads``.
        compile: also time ``ours+compile``.
        memory: ``"largest"`` (peak memory at each case's largest size), ``"all"`` or ``"none"``.
        progress: called with each finished row.
    """
    default_cases()
    torch.set_num_threads(threads)
    names = list(CASES) if cases is None else list(cases)
    rows: list[Row] = []
    was_compiled = kernels.compile_enabled()
    impl_names = ["ours", *(["ours+compile"] if compile else []), "naive", "torchvision"]
    try:
        for name in names:
            case = CASES[name]
            case_sizes = tuple(sizes) if sizes else case.sizes
            if name == "sigmoid_focal_loss":
                case_sizes = tuple(n for n in case_sizes if n <= 10**5) or (min(case_sizes),)
            for n in case_sizes:
                gen = torch.Generator().manual_seed(seed)
                x = case.make_inputs(n, gen)
                row = Row(name, case.label(n), n, {})
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
        kernels.set_compile(was_compiled)
    return rows


# ----------------------------------------------------------------------------------------- memory


def measure_memory(case: str, n: int, impl: str, threads: int = 2, seed: int = 0) -> float | None:
    """Peak extra memory (MB) of one forward+backward, in a fresh Python process (``None`` on failure)."""
    args = json.dumps([case, n, impl, threads, seed])
    cmd = [sys.executable, "-m", "detloss.bench", "--memory-worker", args]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([p for p in sys.path if p] + [env.get("PYTHONPATH", "")])
    # glibc serves blocks >= 16 KiB by mmap and unmaps them on free, so the resident set follows the
    # live tensors instead of keeping freed heap pages that a later allocation would reuse unseen
    env["MALLOC_MMAP_THRESHOLD_"] = "16384"
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, check=True)
        return float(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError):
        return None


def _status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _memory_worker(case_name: str, n: int, impl: str, threads: int, seed: int) -> float:
    default_cases()
    torch.set_num_threads(threads)
    case = CASES[case_name]
    step = _impl_step(case, impl)
    if step is None:
        raise ValueError(f"{impl} is not available for {case_name}")
    fn = _grad_step(step, case.make_inputs(n, torch.Generator().manual_seed(seed)), impl == "ours+compile")
    fn()  # warm-up at full size: imports, compilation, and the first-call allocations of a new shape
    before = _status_kib("VmRSS")
    try:  # reset the peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        fn()
        peak = _status_kib("VmHWM")
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB; a lower bound
        fn()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(0, peak - before) / 1024.0


# ----------------------------------------------------------------------------------------- report


def _fmt_ms(t: float | None) -> str:
    if t is None:
        return "skipped"
    return f"{t:.3g} ms" if t >= 1 else f"{1e3 * t:.3g} µs"


def _fmt_ratio(a: float | None, b: float | None) -> str:
    return "–" if a is None or b is None else f"{a / b:.2g}×" if a / b < 10 else f"{a / b:.0f}×"


def best_ours(row: Row) -> float | None:
    """The time of the path a user enabling compilation gets (compiled if measured, else eager)."""
    return row.times_ms.get("ours+compile") or row.times_ms.get("ours")


def table(rows: Sequence[Row]) -> str:
    """One markdown table: times, ratios peer / ours (ours = compiled when measured), ours / floor,
    peak extra memory, compile warm-up."""
    impls = [k for k in IMPLS if any(k in r.times_ms for r in rows)]
    ratios = ["naive/ours", "tv/ours", "ours/floor"]
    head = ["case", "N", *impls, *ratios, "mem ours", "mem naive", "mem tv", "warm-up"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ours = best_ours(r)
        mem_key = "ours+compile" if "ours+compile" in r.memory_mb else "ours"

        def mem(k: str, r: Row = r) -> str:
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
    ops = _torchvision_ops()
    tv = None
    if ops is not None:
        import torchvision

        tv = torchvision.__version__
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "torch": torch.__version__,
        "torchvision": tv or "not installed",
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }


def to_json(rows: Sequence[Row], path: str) -> None:
    data = {"environment": environment(), "rows": [r.__dict__ for r in rows]}
    with open(path, "w") as f:
        json.dump(data, f, indent=1)


def plot(rows: Sequence[Row], path: str) -> None:
    """Time vs N on log axes, one panel per case (matplotlib: the ``bench`` extra)."""
    require("matplotlib", "bench").use("Agg")
    plt = require("matplotlib.pyplot", "bench", "matplotlib")

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


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--memory-worker":
    print(_memory_worker(*json.loads(sys.argv[2])))
