"""The ``detloss`` command. The only module, with the lab, that prints."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .iou import IOU_KINDS, bbox_iou
from .losses import sigmoid_focal_loss


def tour(args: argparse.Namespace) -> int:
    """Print the IoU family on an example pair of boxes and focal loss against BCE."""
    pred = torch.tensor(args.pred, dtype=torch.float64)
    target = torch.tensor(args.target, dtype=torch.float64)
    print(f"pred   {args.pred} (xyxy)\ntarget {args.target} (xyxy)\n")
    print(f"{'kind':6} {'value':>9} {'loss 1-v':>9}")
    for kind in IOU_KINDS:
        v = bbox_iou(pred, target, kind).item()
        print(f"{kind:6} {v:9.5f} {1 - v:9.5f}")

    print("\nfocal (alpha=0.25, gamma=2) vs BCE for a positive (t=1) and a negative (t=0):")
    print(f"{'logit':>6} {'p':>7} {'BCE t=1':>9} {'focal t=1':>10} {'BCE t=0':>9} {'focal t=0':>10}")
    for x in (-4.0, -2.0, 0.0, 2.0, 4.0):
        logit = torch.tensor([x, x], dtype=torch.float64)
        t = torch.tensor([1.0, 0.0], dtype=torch.float64)
        bce = F.binary_cross_entropy_with_logits(logit, t, reduction="none")
        focal = sigmoid_focal_loss(logit, t, reduction="none")
        p = torch.sigmoid(logit[0]).item()
        print(
            f"{x:6.1f} {p:7.4f} {bce[0].item():9.5f} {focal[0].item():10.5f} "
            f"{bce[1].item():9.5f} {focal[1].item():10.5f}"
        )
    print("\nEasy examples (p_t near 1) are down-weighted by (1 - p_t)^gamma; hard ones keep their BCE.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detloss", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("tour", help="the IoU family and focal loss on a built-in example (default)")
    p.add_argument("--pred", type=float, nargs=4, default=[0.0, 0.0, 4.0, 2.0], metavar="X")
    p.add_argument("--target", type=float, nargs=4, default=[1.0, 1.0, 3.0, 5.0], metavar="X")
    p.set_defaults(func=tour)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["tour", *(argv or [])])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
