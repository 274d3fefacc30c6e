"""Mixed precision: float16/bfloat16 inputs and torch.autocast give finite losses close to float32.

Stated tolerances (relative error of the reduced loss against the float64 value on the same
float32 inputs; measured worst case in brackets, 256 boxes / 256×20 logits):
- float16 inputs: 2e-3 (2.8e-4, IoU family); bfloat16 inputs: 2e-2 (4.9e-3, GIoU). The error is the
  rounding of the inputs (2^-11 and 2^-8 relative); the computation itself runs in float32, which
  the exact agreement with the upcast inputs (1e-6) proves.
- autocast("cpu", bfloat16) with float32 inputs: 1e-6 — the losses are elementwise ops that autocast
  does not lower, and they return float32.
"""

from __future__ import annotations

import pytest
import torch

import detloss
from detloss.kernels import IOU_KINDS

KW = {"mpdiou": {"image_size": (640.0, 480.0)}}  # MPDIoU's required image size

HALF_RTOL = {torch.float16: 2e-3, torch.bfloat16: 2e-2}


def _inputs():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(256, 2, generator=g) * 400
    pred = torch.cat((xy, xy + torch.rand(256, 2, generator=g) * 100 + 2), -1)
    target = pred + torch.randn(256, 4, generator=g) * 8
    logits = torch.randn(256, 20, generator=g) * 4
    labels = (torch.rand(256, 20, generator=g) > 0.9).float()
    return pred, target, logits, labels


PRED, TARGET, LOGITS, LABELS = _inputs()
CASES = {
    f"iou_loss-{k}": (lambda a, b, k=k: detloss.iou_loss(a, b, k, **KW.get(k, {})), PRED, TARGET)
    for k in IOU_KINDS
}
CASES.update(
    {
        "sigmoid_focal_loss": (lambda a, b: detloss.sigmoid_focal_loss(a, b), LOGITS, LABELS),
        "sigmoid_focal_loss-g1.5": (lambda a, b: detloss.sigmoid_focal_loss(a, b, -1.0, 1.5), LOGITS, LABELS),
        "smooth_l1_loss": (lambda a, b: detloss.smooth_l1_loss(a, b, 3.0), PRED / 50, TARGET / 50),
    }
)


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("name", sorted(CASES))
def test_half_inputs_are_computed_in_float32(name, dtype):
    fn, a, b = CASES[name]
    ref = fn(a.double(), b.double())
    a_half = a.to(dtype).requires_grad_()
    out = fn(a_half, b.to(dtype))
    assert out.dtype == torch.float32 and torch.isfinite(out)
    torch.testing.assert_close(out.double(), ref, rtol=HALF_RTOL[dtype], atol=0)
    # the same rounded inputs in float32 give the same number: the computation is float32
    torch.testing.assert_close(out, fn(a.to(dtype).float(), b.to(dtype).float()), rtol=1e-6, atol=0)
    out.backward()
    assert a_half.grad.dtype == dtype and torch.isfinite(a_half.grad).all()


@pytest.mark.parametrize("name", sorted(CASES))
def test_autocast_bf16_leaves_the_loss_in_float32(name):
    fn, a, b = CASES[name]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fn(a, b)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, fn(a, b), rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_iou_family_half_outputs_keep_the_input_dtype(dtype):
    """Elementwise similarities return the input dtype (computed in float32, rounded once)."""
    for kind in IOU_KINDS:
        out = detloss.bbox_iou(PRED.to(dtype), TARGET.to(dtype), kind, **KW.get(kind, {}))
        assert out.dtype == dtype
        ref = detloss.bbox_iou(PRED.to(dtype).float(), TARGET.to(dtype).float(), kind, **KW.get(kind, {}))
        torch.testing.assert_close(out, ref.to(dtype), rtol=0, atol=0)


def test_autocast_model_output_to_losses():
    """A bf16 head under autocast (a Linear, which autocast lowers) feeding every loss: finite
    values and gradients, within the bfloat16 tolerance of the float32 run."""
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 4 + 20)
    feats = torch.randn(64, 16)
    anchors = torch.cat((torch.rand(64, 2) * 300, torch.rand(64, 2) * 300 + 310), -1)
    targets = anchors + torch.randn(64, 4) * 5
    labels = (torch.rand(64, 20) > 0.9).float()

    def total(out):
        boxes = anchors + out[:, :4] * 10
        return (
            detloss.iou_loss(boxes, targets, "ciou")
            + detloss.sigmoid_focal_loss(out[:, 4:], labels)
            + detloss.smooth_l1_loss(out[:, :4], (targets - anchors) / 10)
        )

    ref = total(head(feats))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(feats)
        assert out.dtype == torch.bfloat16
        loss = total(out)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref, rtol=HALF_RTOL[torch.bfloat16], atol=0)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())
