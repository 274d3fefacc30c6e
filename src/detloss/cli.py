"""The ``detloss`` command: the tour (default) and the lab. The only module, with the lab, that prints.

Benchmarks are not a command: they live beside the package, in the repository's ``benchmarks/bench.py``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ._extras import MissingExtraError
from ._version import __version__
from .iou import IOU_KINDS, bbox_iou
from .losses import sigmoid_focal_loss

TOUR_IMAGE = 16.0


def tour(args: argparse.Namespace) -> int:
    """Print the IoU family on an example pair of boxes and focal loss against BCE."""
    pred = torch.tensor(args.pred, dtype=torch.float64)
    target = torch.tensor(args.target, dtype=torch.float64)
    print(f"pred   {args.pred} (xyxy)\ntarget {args.target} (xyxy)\n")
    print(f"{'kind':6} {'value':>9} {'loss 1-v':>9}")
    for kind in IOU_KINDS:
        image = {"image_size": TOUR_IMAGE} if kind == "mpdiou" else {}  # MPDIoU needs the image size
        v = bbox_iou(pred, target, kind, **image).item()
        print(f"{kind:6} {v:9.5f} {1 - v:9.5f}")
    print(f"(mpdiou with image_size={TOUR_IMAGE})")

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
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("tour", help="the IoU family and focal loss on a built-in example (default)")
    p.add_argument("--pred", type=float, nargs=4, default=[0.0, 0.0, 4.0, 2.0], metavar="X")
    p.add_argument("--target", type=float, nargs=4, default=[1.0, 1.0, 3.0, 5.0], metavar="X")
    p.set_defaults(func=tour)

    _add_lab_commands(sub)
    parser.set_defaults(commands=tuple(sub.choices))
    return parser


def _lab(module: str):
    """A handler that imports ``detloss.lab.<module>`` only when its command runs."""

    def run(args: argparse.Namespace) -> int:
        import importlib

        if args.threads:
            torch.set_num_threads(args.threads)
        try:
            return importlib.import_module(f"detloss.lab.{module}").main(args)
        except MissingExtraError as e:
            print(f"detloss {args.command}: {e}", file=sys.stderr)
            return 1

    return run


KINDS_HELP = (
    f"IoU-family losses (default: every kind, {', '.join(IOU_KINDS)}); a modifier is written "
    "KIND+alpha[=A], KIND+inner[=R] or KIND+focaler[=D,U] (defaults 3, 0.8, 0,0.95), e.g. ciou+alpha"
)


def _variant(text: str) -> str:
    """argparse type of ``--kinds``: a kind or ``kind+modifier[=value]``, checked when parsed."""
    from .lab.simulate import parse_variant  # the lab's parser; needs only torch

    try:
        parse_variant(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _add_lab_commands(sub: argparse._SubParsersAction) -> None:
    """The lab's commands (optional extra ``detloss[lab]``: matplotlib, tqdm, pycocotools)."""
    p = sub.add_parser(
        "simulate",
        help="the DIoU paper's simulation experiment (Fig. 3(b), Fig. 4)",
        description="Regress 343 anchor/target cases per point over a disc of radius 3 for T iterations "
        "with each IoU-family loss; print the final-error table and write PNGs.",
    )
    p.add_argument("--points", type=int, default=1000, help="anchor points (the paper: 5000); default 1000")
    p.add_argument("--step", choices=("autograd", "paper", "both"), default="autograd",
                   help="autograd: the losses' true gradients; paper: the authors' hand-written directions")
    p.add_argument("--kinds", "--losses", dest="kinds", nargs="+", type=_variant, metavar="KIND",
                   help=KINDS_HELP)
    p.add_argument("--iterations", type=int, default=200, help="T (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-points", type=int, default=400, help="points per vectorised batch")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--out", default="lab_out", help="output folder for PNGs (default lab_out)")
    p.add_argument("--json", nargs="?", const="", default=None, metavar="PATH",
                   help="write E(t) per loss as JSON (default path OUT/simulate.json)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default: torch's choice; 1 is fastest on a busy machine)")
    p.set_defaults(func=_lab("simulate"))

    p = sub.add_parser(
        "plot",
        help="landscapes: value and gradient of each IoU-family loss as a box slides and scales",
        description="Heat maps of 1 - IoU-kind and of its gradient norm w.r.t. (x, y, w, h).",
    )
    p.add_argument("--kinds", "--losses", dest="kinds", nargs="+", type=_variant, metavar="KIND",
                   help=KINDS_HELP)
    p.add_argument("--target-size", type=float, nargs=2, default=[2.0, 1.0], metavar=("W", "H"))
    p.add_argument("--pred-size", type=float, nargs=2, default=[1.0, 1.0], metavar=("W", "H"),
                   help="size of the sliding box (default 1 1)")
    p.add_argument("--scale-offset", type=float, nargs=2, default=[0.5, 0.25], metavar=("DX", "DY"),
                   help="centre offset of the scaled box (default 0.5 0.25)")
    p.add_argument("--range", type=float, default=3.0, help="offsets in [-R, R] (default 3)")
    p.add_argument("--grid", type=int, default=161, help="grid points per axis (default 161)")
    p.add_argument("--rotated", action="store_true",
                   help="the rotated kinds (iou, probiou, kld, gwd) as the box turns and shifts, against an "
                   "elongated (--target-size) and a square target; --kinds and the box sizes are unused")
    p.add_argument("--out", default="lab_out", help="output folder for PNGs (default lab_out)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default: torch's choice; 1 is fastest on a busy machine)")
    p.set_defaults(func=_lab("landscape"))

    p = sub.add_parser(
        "demo",
        help="train a tiny detector on synthetic shapes with a detloss criterion; report COCO mAP",
        description="Generate coloured shapes on textured backgrounds, train a tiny YOLO-style detector with "
        "the chosen criterion, evaluate mAP@0.5 and mAP@0.5:0.95 (pycocotools) on a held-out split.",
    )
    p.add_argument("--criterion",
                   choices=("yolov3", "yolov4", "yolov5", "yolov8", "yolo26", "rtdetr", "ssd", "obb", "all"),
                   default="yolov5",
                   help="criterion to train with (default yolov5; 'all' runs each in turn); obb: "
                   "YOLOv8OBBLoss on rotated shapes, DOTA-protocol rotated mAP")
    p.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    p.add_argument("--train-images", type=int, default=512)
    p.add_argument("--test-images", type=int, default=128)
    p.add_argument("--size", type=int, default=64, help="image side in pixels, a multiple of 32 (default 64)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--width", type=int, default=32, help="base channel width of the detector")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="lab_out", help="output folder for PNGs and JSON (default lab_out)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default: torch's choice; 1 is fastest on a busy machine)")
    p.set_defaults(func=_lab("demo"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = parser.get_default("commands")
    if not argv or (argv[0] not in commands and argv[0] not in ("-h", "--help", "--version")):
        argv = ["tour", *argv]  # `detloss [tour options]` runs the default command
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
