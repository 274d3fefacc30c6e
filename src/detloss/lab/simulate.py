"""The simulation experiment of the Distance-IoU paper (Zheng et al., AAAI 2020, Fig. 3(b), Fig. 4).

Set-up (the authors' ``test_1715k.m``; docs/simulation.md): 7 targets of area 1 centred
at (10, 10) with w:h = 1:4 … 4:1; anchor centres at N points uniform over the disc of radius 3; at
each point 7 areas × 7 aspect ratios = 49 anchors, each regressed to each target: 343 cases per point
(1,715,000 at the paper's 5,000 points). Every case is a box (x, y, w, h) updated T = 200 times by

    B(t) = B(t−1) − η_t · (2 − IoU(B(t−1), B_gt)) · ∇_B L(B(t−1)),   η = 0.1, then 0.01 after 0.8T,
                                                                       0.001 after 0.9T

and the error is E(t) = Σ_cases |x − x_gt| + |y − y_gt| + |w − w_gt| + |h − h_gt|.

Two kinds of step:

- ``autograd``: ∇_B L is the true gradient of ``L = 1 − iou_xyxy(B, B_gt, kind, **modifiers)``
  (detloss's one implementation of every IoU-family formula), for every kind — iou, giou, diou,
  ciou, eiou, siou, wiou (Wise-IoU v1), mpdiou (image = the 20 × 20 canvas around (10, 10)) — and
  the modifiers, named ``kind+alpha[=3]``, ``kind+inner[=0.8]``, ``kind+focaler[=0,0.95]``
  (:func:`parse_variant`).
- ``paper``: the update directions the authors wrote by hand in their MATLAB script (``dIOU.m``,
  ``dGIOU.m``, ``dDIOU.m``, ``dCIOU.m``), re-derived here for iou, giou, diou and ciou. They are what
  makes Fig. 3(b); see :func:`paper_direction` for where they differ from the true gradients.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..checks import check_modifiers
from ..iou import iou_xyxy
from ..kernels import IOU_KINDS

STEP_KINDS = ("autograd", "paper")
PAPER_KINDS = ("iou", "giou", "diou", "ciou")  # the losses the script has hand-written directions for
ASPECTS = (0.25, 1 / 3, 0.5, 1.0, 2.0, 3.0, 4.0)  # w:h of targets and anchors
AREAS = (0.5, 0.67, 0.75, 1.0, 1.33, 1.5, 2.0)  # anchor areas (× target area 1), literally as in the script
CENTRE = 10.0
RADIUS = 3.0
MIN_SIDE = 1e-3  # floor on w, h after an autograd step; never reached in practice, keeps every loss finite
CANVAS = (2 * CENTRE, 2 * CENTRE)  # MPDIoU's image: every box of the experiment lies in [0, 20]²

# defaults of the modifiers when a variant names none: the papers' usual choices
MODIFIER_DEFAULTS: dict[str, object] = {"alpha": 3.0, "inner": 0.8, "focaler": (0.0, 0.95)}
_MODIFIER_KEYWORDS = {"alpha": "alpha", "inner": "inner_ratio", "focaler": "focaler"}


@dataclass(frozen=True)
class Variant:
    """An IoU-family loss of the lab: a kind and at most one modifier (the keywords of ``iou_xyxy``)."""

    name: str
    kind: str
    modifiers: tuple[tuple[str, object], ...] = ()

    def iou(self, pred: Tensor, target: Tensor, image_size: tuple[float, float] = CANVAS) -> Tensor:
        """The variant's value of xyxy boxes (``image_size``: MPDIoU's, ignored by the other kinds)."""
        return iou_xyxy(pred, target, self.kind, image_size=image_size, **dict(self.modifiers))


def parse_variant(text: str) -> Variant:
    """``"ciou"``, ``"ciou+alpha"``, ``"ciou+alpha=2"``, ``"giou+inner=1.2"``, ``"siou+focaler=0.1,0.9"``.

    Raises ``ValueError`` for an unknown kind or modifier, or a modifier the kind does not take.
    """
    kind, _, mod = text.partition("+")
    modifiers: tuple[tuple[str, object], ...] = ()
    if mod:
        name, _, value = mod.partition("=")
        if name not in _MODIFIER_KEYWORDS:
            raise ValueError(f"unknown modifier {name!r} in {text!r}; known: {', '.join(_MODIFIER_KEYWORDS)}")
        if not value:
            parsed: object = MODIFIER_DEFAULTS[name]
        elif name == "focaler":
            parsed = tuple(float(v) for v in value.split(","))
        else:
            parsed = float(value)
        modifiers = ((_MODIFIER_KEYWORDS[name], parsed),)
    check_modifiers(kind, **dict(modifiers), image_size=CANVAS if kind == "mpdiou" else None)
    return Variant(text, kind, modifiers)


def variants(names: tuple[str, ...] | None) -> list[Variant]:
    """The named variants, or every plain kind."""
    return [parse_variant(n) for n in (names or IOU_KINDS)]


@dataclass
class SimResult:
    """E(t) for t = 1…T per loss (float64 sums over all cases) and E(T, n) per point."""

    step: str
    curves: dict[str, list[float]] = field(default_factory=dict)
    final_per_point: dict[str, Tensor] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _sides(aspect: float) -> tuple[float, float]:
    """(w, h) of a unit-area box with w/h = aspect."""
    return math.sqrt(aspect), 1.0 / math.sqrt(aspect)


def make_cases(
    points: int, seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor, Tensor]:
    """The experiment's boxes.

    Returns:
        centres ``(N, 2)``: anchor centres, radius 3·√U₁ and angle 2π·U₂ around (10, 10);
        anchors ``(N, 343, 4)`` and targets ``(343, 4)`` as (x, y, w, h), case index
        ``target·49 + area·7 + aspect`` (the script's loop order).
    """
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(2, points, generator=g, dtype=torch.float64)
    r, theta = RADIUS * u[0].sqrt(), 2 * math.pi * u[1]
    centres = torch.stack([CENTRE + r * theta.cos(), CENTRE + r * theta.sin()], -1)
    shapes = torch.tensor([_sides(a) for a in ASPECTS], dtype=torch.float64)  # (7, 2) unit area
    scale = torch.tensor(AREAS, dtype=torch.float64).sqrt()
    anchor_wh = (scale[:, None, None] * shapes[None]).reshape(49, 2)  # (area, aspect)
    wh = anchor_wh.repeat(7, 1)  # (343, 2): the 49 anchors once per target
    targets = torch.cat(
        [torch.full((343, 2), CENTRE, dtype=torch.float64), shapes.repeat_interleave(49, 0)], 1
    )
    anchors = torch.cat([centres[:, None, :].expand(-1, 343, -1), wh[None].expand(points, -1, -1)], -1)
    return centres, anchors.to(dtype), targets.to(dtype)


def step_sizes(iterations: int = 200) -> list[float]:
    """η_t for t = 1…T: 0.1 up to 0.8T, 0.01 up to 0.9T, then 0.001 (the script's 160/180/200)."""
    return [
        0.1 if t <= 0.8 * iterations else 0.01 if t <= 0.9 * iterations else 0.001
        for t in range(1, iterations + 1)
    ]


def to_xyxy(b: Tensor) -> Tensor:
    x, y, w, h = b.unbind(-1)
    return torch.stack([x - w / 2, y - h / 2, x + w / 2, y + h / 2], -1)


def autograd_step(kind: str | Variant, box: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """True gradient of ``L = 1 − kind-IoU`` (a kind or a :class:`Variant`) w.r.t. (x, y, w, h), per
    case, and the plain IoU.

    The per-case losses are summed, so each case gets its own loss's gradient (a mean would divide
    every step by the batch size).
    """
    box = box.detach().requires_grad_(True)
    pred = to_xyxy(box)
    gt = to_xyxy(target)
    variant = kind if isinstance(kind, Variant) else parse_variant(kind)
    loss = (1.0 - variant.iou(pred, gt)).sum()
    (grad,) = torch.autograd.grad(loss, box)
    with torch.no_grad():
        iou = iou_xyxy(pred, gt, "iou")
    return grad, iou


def paper_direction(kind: str, box: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """The authors' hand-written ascent direction of the ``kind`` similarity, and their plain IoU.

    Written from their formulas (``dIOU.m`` … ``dCIOU.m``), vectorised; the update *adds*
    η(2 − IoU)·direction. Edges l, r, t, b (t the smaller y). Where it departs from the gradient:

    1. Edge derivatives become (x, y, w, h) ones by dx = ∂l + ∂r, dw = ∂r − ∂l (no factor ½ on w, h).
    2. IoU part: (U·∂I − I·∂U)/U² where the boxes overlap, else 0.
       GIoU adds ∂(U/C) = (C·∂U − U·∂C)/C² with I (and so U) the *signed*, unclamped intersection.
    3. DIoU adds ∂(−ρ²/c²) with the term from ∂c² entering the centre update with the wrong sign,
       the enclosing box's width and height derivatives shared by both sides, and ∂C_w/∂w = −1
       (not +1) when the box spans the target horizontally (likewise for h).
    4. CIoU adds α·8/π²·(atan(w_gt/h_gt) − atan(w/h))·(h, −w) on (w, h): the factor 1/(w² + h²)
       dropped, α = v/(1 − IoU + v + 1e−7) held constant.

    Args:
        kind: "iou" | "giou" | "diou" | "ciou".
        box, target: ``(..., 4)`` (x, y, w, h), broadcastable.
    Returns:
        direction ``(..., 4)`` on (x, y, w, h), IoU ``(...)`` (0 without overlap).
    """
    if kind not in PAPER_KINDS:
        raise ValueError(f"the paper has hand-written directions only for {PAPER_KINDS}, got {kind!r}")
    x, y, w, h = box.unbind(-1)
    xg, yg, wg, hg = target.unbind(-1)
    l, r, t, b = x - w / 2, x + w / 2, y - h / 2, y + h / 2
    lg, rg, tg, bg = xg - wg / 2, xg + wg / 2, yg - hg / 2, yg + hg / 2
    iw = torch.minimum(r, rg) - torch.maximum(l, lg)  # signed: the script never clamps
    ih = torch.minimum(b, bg) - torch.maximum(t, tg)
    inter = iw * ih
    union = w * h + wg * hg - inter
    overlap = (iw > 0) & (ih > 0)
    safe_union = torch.where(overlap, union, torch.ones_like(union))
    iou = torch.where(overlap, inter / safe_union, torch.zeros_like(inter))

    # edge derivatives (order l, r, t, b) of the intersection and of the box's own area
    d_inter = torch.stack([-ih * (l > lg), ih * (r < rg), -iw * (t > tg), iw * (b < bg)], -1)
    d_area = torch.stack([-h, h, -w, w], -1)
    d_union = d_area - d_inter
    edges = torch.where(
        overlap[..., None],
        (safe_union[..., None] * d_inter - inter[..., None] * d_union) / safe_union[..., None] ** 2,
        torch.zeros_like(d_inter),
    )
    if kind == "giou":
        cw = torch.maximum(r, rg) - torch.minimum(l, lg)
        ch = torch.maximum(b, bg) - torch.minimum(t, tg)
        c = (cw * ch)[..., None]
        d_c = torch.stack([-ch * (l < lg), ch * (r > rg), -cw * (t < tg), cw * (b > bg)], -1)
        edges = edges + (c * d_union - union[..., None] * d_c) / c**2

    dl, dr, dt, db = edges.unbind(-1)
    direction = torch.stack([dl + dr, dt + db, dr - dl, db - dt], -1)
    if kind in ("iou", "giou"):
        return direction, iou

    ml, mr, mt, mb = (l < lg).to(x), (r > rg).to(x), (t < tg).to(x), (b > bg).to(x)
    cw = torch.maximum(r, rg) - torch.minimum(l, lg)
    ch = torch.maximum(b, bg) - torch.minimum(t, tg)
    c2 = cw * cw + ch * ch
    # one derivative vector (x, y, w, h) serves as both ∂C_w and ∂C_h, as in the script
    side = torch.stack([mr - ml, mb - mt, 0.5 * (mr + ml), 0.5 * (mb + mt)], -1)
    d_cw = torch.cat(
        [side[..., :2], torch.where((ml * mr) > 0, -1.0, side[..., 2]).unsqueeze(-1), side[..., 3:]], -1
    )
    d_ch = torch.cat([side[..., :3], torch.where((mt * mb) > 0, -1.0, side[..., 3]).unsqueeze(-1)], -1)
    d_c2 = 2 * cw[..., None] * d_cw + 2 * ch[..., None] * d_ch
    rho2 = (x - xg) ** 2 + (y - yg) ** 2
    pull = torch.stack([2 * (xg - x), 2 * (yg - y), torch.zeros_like(x), torch.zeros_like(x)], -1)
    sign = torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=x.dtype)
    penalty = (pull * c2[..., None] + sign * d_c2 * rho2[..., None]) / (c2 * c2)[..., None]
    direction = direction + penalty
    if kind == "ciou":
        gap = torch.atan(wg / hg) - torch.atan(w / h)
        v = 4 / math.pi**2 * gap**2
        alpha = v / (1 - iou + v + 1e-7)
        aspect = 8 / math.pi**2 * alpha * gap
        direction = direction + torch.stack(
            [torch.zeros_like(x), torch.zeros_like(x), aspect * h, -aspect * w], -1
        )
    return direction, iou


def _regress(
    kind: Variant, step: str, box: Tensor, target: Tensor, etas: list[float], curve: Tensor, bar: Any
) -> Tensor:
    """Run T updates on a batch of cases ``(n, 343, 4)``, adding E(t) to ``curve`` (T,); returns the boxes."""
    for t, eta in enumerate(etas):
        if step == "autograd":
            grad, iou = autograd_step(kind, box, target)
            box = box - eta * (2 - iou)[..., None] * grad
            box = torch.cat([box[..., :2], box[..., 2:].clamp(min=MIN_SIDE)], -1)
        else:
            direction, iou = paper_direction(kind.kind, box, target)
            box = box + eta * (2 - iou)[..., None] * direction  # the script adds the similarity's direction
        curve[t] += (box - target).abs().sum(dtype=torch.float64)
        bar.update(1)
    return box


def run(
    points: int = 1000,
    steps: tuple[str, ...] = ("autograd",),
    kinds: tuple[str, ...] | None = None,
    iterations: int = 200,
    seed: int = 0,
    batch_points: int = 400,
    dtype: torch.dtype = torch.float32,
    show_progress: bool = True,
) -> tuple[float, list[SimResult], Tensor]:
    """Run the experiment; return E(0), one :class:`SimResult` per step kind, and the centres ``(N, 2)``."""
    centres, anchors, targets = make_cases(points, seed, dtype)
    e0 = float((anchors.double() - targets.double()).abs().sum())
    etas = step_sizes(iterations)
    plan = [
        (s, v) for s in steps for v in variants(kinds)
        if s == "autograd" or (v.kind in PAPER_KINDS and not v.modifiers)
    ]
    batches = [slice(i, min(i + batch_points, points)) for i in range(0, points, batch_points)]
    from ._util import progress

    total = len(plan) * len(batches) * iterations
    bar = progress(total=total, unit="it", desc="simulate", disable=not show_progress)
    results = {s: SimResult(s) for s in steps}
    with bar:
        for step, kind in plan:
            bar.set_postfix_str(f"{step} {kind.name}")
            start = time.perf_counter()
            curve = torch.zeros(iterations, dtype=torch.float64)
            finals = []
            for sl in batches:
                box = _regress(kind, step, anchors[sl], targets, etas, curve, bar)
                finals.append((box - targets).abs().sum((-1, -2), dtype=torch.float64))
            results[step].curves[kind.name] = curve.tolist()
            results[step].final_per_point[kind.name] = torch.cat(finals)
            results[step].seconds[kind.name] = time.perf_counter() - start
    return e0, [results[s] for s in steps], centres


def format_table(e0: float, result: SimResult) -> str:
    """The final-error table: E(t) at the paper's read-out times, E(T)/E(0), seconds."""
    T = len(next(iter(result.curves.values())))
    marks = sorted({t for t in (1, 10, 20, 40, 80, 160, 180, T) if t <= T})
    width = max(6, *(len(k) + 1 for k in result.curves))
    head = (
        f"{'loss':{width}}"
        + "".join(f"{'E(' + str(t) + ')':>11}" for t in marks)
        + f"{'E(T)/E(0)':>11}{'seconds':>9}"
    )
    lines = [f"step: {result.step}   E(0) = {e0:.4g}", head]
    for kind, curve in result.curves.items():
        row = "".join(f"{curve[t - 1]:11.4g}" for t in marks)
        lines.append(f"{kind:{width}}{row}{curve[-1] / e0:11.4g}{result.seconds[kind]:9.1f}")
    return "\n".join(lines)


_COLOURS = {
    "iou": "tab:blue",
    "giou": "tab:orange",
    "diou": "tab:green",
    "ciou": "tab:red",
    "eiou": "tab:purple",
    "siou": "tab:brown",
    "wiou": "tab:pink",
    "mpdiou": "tab:olive",
}
_STYLES = {"": "-", "alpha": (0, (5, 1)), "inner": (0, (1, 1)), "focaler": (0, (3, 1, 1, 1))}


def _line(name: str, step: str) -> tuple[str, object]:
    """Colour by kind; line style by modifier (autograd) or dashed (paper)."""
    kind, _, mod = name.partition("+")
    style = _STYLES.get(mod.partition("=")[0], "-") if step == "autograd" else "--"
    return _COLOURS.get(kind, "tab:gray"), style


def plot_curves(e0: float, results: list[SimResult], path: Path) -> Path:
    """E(t) per loss on a log axis; one line style per step kind (solid autograd, dashed paper)."""
    from ._util import pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for res in results:
        for kind, curve in res.curves.items():
            label = f"{kind.upper() if kind != 'iou' else 'IoU'} ({res.step})"
            colour, style = _line(kind, res.step)
            ax.plot(range(1, len(curve) + 1), curve, ls=style, color=colour, label=label)
    ax.axhline(e0, color="grey", lw=0.8, ls=":", label="E(0)")
    ax.set_yscale("log")
    ax.set_xlabel("iteration t")
    ax.set_ylabel("E(t) = Σ |x−x_gt| + |y−y_gt| + |w−w_gt| + |h−h_gt|")
    ax.set_title("DIoU-paper simulation: regression error " + " vs ".join(r.step for r in results))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return save(fig, path)


def plot_maps(centres: Tensor, result: SimResult, path: Path) -> Path:
    """Fig. 4: the final error E(T, n) of each point n (sum over its 343 cases), one panel per loss."""
    from ._util import pyplot, save

    plt = pyplot()
    kinds = list(result.final_per_point)
    cols = min(3, len(kinds))
    rows = math.ceil(len(kinds) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    for ax in axes.flat[len(kinds) :]:
        ax.axis("off")
    for ax, kind in zip(axes.flat, kinds, strict=False):
        err = result.final_per_point[kind].numpy()
        sc = ax.scatter(centres[:, 0].numpy(), centres[:, 1].numpy(), c=err, s=4, cmap="viridis")
        ax.set_aspect("equal")
        ax.set_title(f"{kind}: E(T, n) max {err.max():.3g}", fontsize=9)
        fig.colorbar(sc, ax=ax, shrink=0.8)
    fig.suptitle(f"final error per anchor point ({result.step} steps)")
    return save(fig, path)


def main(args: argparse.Namespace) -> int:
    steps = STEP_KINDS if args.step == "both" else (args.step,)
    kinds = tuple(args.kinds) if args.kinds else None
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    print(
        f"{args.points} points × 343 = {args.points * 343:,} cases, T = {args.iterations}, "
        f"steps: {', '.join(steps)} ('paper' covers {', '.join(PAPER_KINDS)})"
    )
    e0, results, centres = run(
        args.points, steps, kinds, args.iterations, args.seed, args.batch_points, dtype
    )
    out = Path(args.out)
    for res in results:
        print()
        print(format_table(e0, res))
    print()
    for res in results:
        plot_curves(e0, [res], out / f"simulate_curves_{res.step}.png")
        plot_maps(centres, res, out / f"simulate_maps_{res.step}.png")
    if len(results) > 1:
        plot_curves(e0, results, out / "simulate_curves_both.png")
    if args.json is not None:
        path = Path(args.json) if args.json else out / "simulate.json"
        payload = {
            "points": args.points,
            "cases": args.points * 343,
            "iterations": args.iterations,
            "seed": args.seed,
            "dtype": args.dtype,
            "E0": e0,
            "E": {r.step: r.curves for r in results},
            "seconds": {r.step: r.seconds for r in results},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=1))
        print(f"wrote {path}")
    return 0
