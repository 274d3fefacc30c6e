"""The fused kernels: one geometric core for the IoU family, the sigmoid focal loss and IA-BCE.

Plain eager PyTorch keeps every intermediate of these formulas (intersection, union, enclosing box,
centre offset, atan terms, sigmoid, ...) as a full-size tensor for the backward pass. Here each loss
has one documented forward formula and, where it pays, a ``torch.autograd.Function`` whose backward
is written out by hand and keeps only the inputs (or, for small IoU inputs, the forward's parts).
One file per concept, the geometry once:

- :mod:`.geometry`: axis planes of the corners, overlap, enclosing box, centre offset;
- :mod:`.iou`: the IoU family's forward formulas (kinds, modifiers, the parts they share);
- :mod:`.iou_grad`: the hand-derived backward of the plain kinds (:func:`iou_backward`);
- :mod:`.iou_function`: the fused Function, its blocked runners and which path runs, :func:`fused_iou`;
- :mod:`.focal`: the sigmoid focal loss, :func:`fused_focal`;
- :mod:`.ia_bce`: LW-DETR's IoU-aware BCE, :func:`fused_ia_bce`;
- :mod:`.runtime`: eager or ``torch.compile`` (:func:`set_compile`), and every measured size
  threshold that chooses among the execution paths.

There is one implementation of each formula; the plain autograd references the kernels are tested
against live in the tests (``tests/kernels/test_fused.py``), not in the package.
"""

from .focal import focal_forward, focal_value_and_grad, fused_focal
from .ia_bce import fused_ia_bce, ia_bce_value_and_grad
from .iou import IOU_KINDS, PLAIN, Modifiers, iou_forward
from .iou_function import fused_iou
from .iou_grad import iou_backward
from .runtime import compile_enabled, set_compile

__all__ = [
    "IOU_KINDS",
    "PLAIN",
    "Modifiers",
    "compile_enabled",
    "focal_forward",
    "focal_value_and_grad",
    "fused_focal",
    "fused_ia_bce",
    "fused_iou",
    "iou_backward",
    "ia_bce_value_and_grad",
    "iou_forward",
    "set_compile",
]
