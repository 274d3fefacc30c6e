"""Loss landscapes of the IoU family: value and gradient magnitude as a predicted box moves.

Two sweeps around a fixed target (centre (0, 0), ``--target-size``):

- *shift*: the predicted box (``--pred-size``) slides over x, y offsets in [−R, R];
- *scale*: the predicted box, centred at ``--scale-offset``, takes widths and heights from 1/4 to 4
  times the target's (log axes).

For each kind or variant (``kind+modifier``, :func:`detloss.lab.simulate.parse_variant`; MPDIoU's
image is the swept square), ``L = 1 − iou_xyxy(pred, target, kind, **modifiers)`` and
``‖∂L/∂(x, y, w, h)‖₂`` (autograd) are drawn as heat maps, one column per kind, value on the top
row, gradient magnitude below. The table in the terminal gives the share of each sweep where the
gradient vanishes (< 1e−6): the plateau where a loss gives a box no direction to move.

With ``--rotated`` (:func:`main_rotated`) the kinds are the rotated ones (iou, probiou, kld, gwd,
:func:`detloss.rotated_bbox_iou`) and the predicted box is a copy of the target turned by Δθ and
shifted along x, for an elongated target (``--target-size``) and a square one: the square's Gaussian
is isotropic, so the Gaussian kinds give its angle no gradient at all.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torch import Tensor

from .simulate import Variant, parse_variant, to_xyxy, variants

FLAT = 1e-6  # gradient norms below this count as a plateau


def evaluate(
    kind: str | Variant, boxes: Tensor, target: Tensor, image_size: tuple[float, float] = (8.0, 8.0)
) -> tuple[Tensor, Tensor]:
    """Loss ``1 − kind-IoU`` and its gradient norm w.r.t. (x, y, w, h) for boxes ``(..., 4)`` (x, y, w, h).

    ``kind``: a kind or variant name, or a :class:`Variant`; ``image_size``: MPDIoU's.
    """
    variant = kind if isinstance(kind, Variant) else parse_variant(kind)
    boxes = boxes.detach().requires_grad_(True)
    loss = 1.0 - variant.iou(to_xyxy(boxes), to_xyxy(target), image_size)
    (grad,) = torch.autograd.grad(loss.sum(), boxes)  # a sum: every box gets its own gradient
    return loss.detach(), grad.norm(dim=-1)


def shift_grid(size: tuple[float, float], extent: float, n: int) -> tuple[Tensor, Tensor]:
    """Boxes ``(n, n, 4)`` of fixed ``size`` centred on an n×n grid over [−extent, extent]²; axis ``(n,)``."""
    axis = torch.linspace(-extent, extent, n, dtype=torch.float64)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    wh = torch.tensor(size, dtype=torch.float64).expand(n, n, 2)
    return torch.cat([xx[..., None], yy[..., None], wh], -1), axis


def scale_grid(size: tuple[float, float], offset: tuple[float, float], n: int) -> tuple[Tensor, Tensor]:
    """Boxes ``(n, n, 4)`` centred at ``offset`` with w, h = size × 4^[−1, 1]; the ratio axis ``(n,)``."""
    ratio = torch.logspace(-math.log10(4), math.log10(4), n, dtype=torch.float64)
    rh, rw = torch.meshgrid(ratio, ratio, indexing="ij")
    centre = torch.tensor(offset, dtype=torch.float64).expand(n, n, 2)
    return torch.cat([centre, (rw * size[0])[..., None], (rh * size[1])[..., None]], -1), ratio


def plot_sweep(
    title: str,
    maps: dict[str, tuple[Tensor, Tensor]],
    extent: list[float],
    log: bool,
    target: Tensor,
    path: Path,
) -> Path:
    from ._util import pyplot, save

    plt = pyplot()
    kinds = list(maps)
    fig, axes = plt.subplots(2, len(kinds), figsize=(3.1 * len(kinds), 5.8), squeeze=False)
    for col, kind in enumerate(kinds):
        value, grad = maps[kind]
        for row, (img, name, cmap) in enumerate(((value, "loss", "viridis"), (grad, "|grad|", "magma"))):
            ax = axes[row, col]
            im = ax.imshow(img.numpy(), origin="lower", extent=extent, cmap=cmap, aspect="auto")
            if log:
                ax.set_xscale("log")
                ax.set_yscale("log")
            else:
                x, y, w, h = target.tolist()
                ax.add_patch(plt.Rectangle((x - w / 2, y - h / 2), w, h, fill=False, ec="white", lw=1))
            ax.set_title(f"{kind} {name}", fontsize=9)
            ax.tick_params(labelsize=7)
            fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def main(args: argparse.Namespace) -> int:
    if getattr(args, "rotated", False):
        return main_rotated(args)
    chosen = variants(tuple(args.kinds) if args.kinds else None)
    kinds = [v.name for v in chosen]
    target = torch.tensor([0.0, 0.0, *args.target_size], dtype=torch.float64)
    out = Path(args.out)
    shift_boxes, axis = shift_grid(tuple(args.pred_size), args.range, args.grid)
    scale_boxes, ratio = scale_grid(tuple(args.target_size), tuple(args.scale_offset), args.grid)
    side = 2 * args.range + max(*args.target_size, *args.pred_size)  # the swept square: MPDIoU's image
    shift = {v.name: evaluate(v, shift_boxes, target, (side, side)) for v in chosen}
    scale = {v.name: evaluate(v, scale_boxes, target, (side, side)) for v in chosen}

    print(f"target (x, y, w, h) = {target.tolist()}; grid {args.grid}×{args.grid}")
    width = max(6, *(len(k) for k in kinds))
    print(
        f"{'kind':{width}} {'shift: loss range':>20} {'max |grad|':>11} {'flat %':>7}   "
        f"{'scale: loss range':>20} {'max |grad|':>11} {'flat %':>7}"
    )
    for k in kinds:
        cells = []
        for v, g in (shift[k], scale[k]):
            flat = 100.0 * float((g < FLAT).double().mean())
            cells.append(f"{float(v.min()):9.3f}…{float(v.max()):<9.3f} {float(g.max()):11.4g} {flat:7.1f}")
        print(f"{k:{width}} {cells[0]}   {cells[1]}")
    print(f"flat % = share of the sweep with |grad| < {FLAT:g}: no direction to move the box")

    r = args.range
    plot_sweep(
        f"predicted box {args.pred_size[0]:g}×{args.pred_size[1]:g} sliding around the target "
        f"{args.target_size[0]:g}×{args.target_size[1]:g} (white)",
        shift,
        [-r, r, -r, r],
        False,
        target,
        out / "landscape_shift.png",
    )
    plot_sweep(
        f"predicted box at offset {tuple(args.scale_offset)} scaled: w/w_gt (x axis), h/h_gt (y axis)",
        scale,
        [float(ratio[0]), float(ratio[-1])] * 2,
        True,
        target,
        out / "landscape_scale.png",
    )
    return 0


# ------------------------------------------------------------------------------------------------
# oriented boxes: detloss plot --rotated
# ------------------------------------------------------------------------------------------------

ROTATED_SWEEP_KINDS = ("iou", "probiou", "kld", "gwd")


def evaluate_rotated(kind: str, boxes: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Loss ``1 − rotated_bbox_iou(pred, target, kind)`` for xywhr ``boxes (..., 5)``, the norm of its
    gradient w.r.t. (x, y, w, h, θ) and ``|∂L/∂θ|`` alone (autograd)."""
    from ..rotated import rotated_bbox_iou

    boxes = boxes.detach().requires_grad_(True)
    loss = 1.0 - rotated_bbox_iou(boxes, target, kind=kind)
    (grad,) = torch.autograd.grad(loss.sum(), boxes)  # a sum: every box gets its own gradient
    return loss.detach(), grad.norm(dim=-1), grad[..., 4].abs()


def rotated_grid(target: Tensor, extent: float, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """Copies of ``target`` (xywhr) turned by Δθ ∈ [−π/2, π/2] (rows) and shifted along x by
    dx ∈ [−extent, extent] (columns): ``(n, n, 5)``, and the two axes ``(n,)``."""
    turn = torch.linspace(-math.pi / 2, math.pi / 2, n, dtype=torch.float64)
    shift = torch.linspace(-extent, extent, n, dtype=torch.float64)
    dt, dx = torch.meshgrid(turn, shift, indexing="ij")
    zero = torch.zeros_like(dt)
    return target + torch.stack((dx, zero, zero, zero, dt), -1), turn, shift


def plot_rotated(
    title: str, maps: dict[str, tuple[Tensor, Tensor, Tensor]], extent: list[float], path: Path
) -> Path:
    """One column per kind; rows: loss, |grad|, |∂L/∂θ|; x: the shift, y: the turn (degrees).

    The |∂L/∂θ| row shares one colour scale, so a kind whose angle gradient is round-off (1e−16) shows
    black instead of having its noise stretched over the whole scale."""
    from ._util import pyplot, save

    plt = pyplot()
    kinds = list(maps)
    fig, axes = plt.subplots(3, len(kinds), figsize=(3.1 * len(kinds), 8.4), squeeze=False)
    names = (("loss", "viridis"), ("|grad|", "magma"), ("|dL/dθ|", "magma"))
    theta_max = max(float(m[2].max()) for m in maps.values())
    for col, kind in enumerate(kinds):
        for row, (img, (name, cmap)) in enumerate(zip(maps[kind], names, strict=True)):
            ax = axes[row, col]
            shared = {"vmin": 0.0, "vmax": theta_max} if row == 2 else {}
            im = ax.imshow(img.numpy(), origin="lower", extent=extent, cmap=cmap, aspect="auto", **shared)
            ax.set_title(f"{kind} {name}", fontsize=9)
            ax.set_xlabel("dx", fontsize=7)
            ax.set_ylabel("Δθ (°)", fontsize=7)
            ax.tick_params(labelsize=7)
            fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def main_rotated(args: argparse.Namespace) -> int:
    """``detloss plot --rotated``: the rotated kinds against an elongated and a square target box."""
    w, h = args.target_size
    side = max(w, h)
    targets = {
        "elongated": torch.tensor([0.0, 0.0, w, h, 0.0], dtype=torch.float64),
        "square": torch.tensor([0.0, 0.0, side, side, 0.0], dtype=torch.float64),
    }
    out = Path(args.out)
    r = args.range
    print(f"predicted box: the target's copy turned by Δθ ∈ [−90°, 90°] and shifted by dx ∈ [−{r:g}, {r:g}]; "
          f"grid {args.grid}×{args.grid}")
    print(f"{'target':10} {'kind':8} {'loss range':>19} {'max |grad|':>11} {'max |dL/dθ|':>12} {'flat %':>7}")
    for name, target in targets.items():
        boxes, turn, shift = rotated_grid(target, r, args.grid)
        maps = {k: evaluate_rotated(k, boxes, target) for k in ROTATED_SWEEP_KINDS}
        for k, (v, g, gt) in maps.items():
            flat = 100.0 * float((g < FLAT).double().mean())
            print(f"{name:10} {k:8} {float(v.min()):9.3f}…{float(v.max()):<9.3f} {float(g.max()):11.4g} "
                  f"{float(gt.max()):12.4g} {flat:7.1f}")
        tw, th = target[2:4].tolist()
        plot_rotated(
            f"{name} target {tw:g}×{th:g}: its copy turned (y) and shifted along x (x)",
            maps,
            [-r, r, -90.0, 90.0],
            out / f"landscape_rotated_{name}.png",
        )
    print("max |dL/dθ| ≈ 0 for the square: a square's Gaussian is the same at every angle, so probiou, kld "
          "and gwd cannot tell its angle (the exact IoU can)")
    return 0
