"""Every criterion is one graph: no host sync without validation, at most one with it, a bounded number
of aten ops (kernel launches on a GPU), and ``torch.compile(fullgraph=True, dynamic=True)`` giving the
eager values and gradients on batches of varying target counts.

The criteria and their inputs come from :func:`tests.cases.cases` (also the table of
``benchmarks/bench.py --criteria``): a new criterion is covered here by one ``CriterionCase`` entry there.
"""

from __future__ import annotations

import pytest
import torch
import torch.fx.experimental._config  # noqa: F401  (use_duck_shape)

import detloss
from detloss.criteria import yolo26_loss
from detloss.kernels.iou import IOU_KINDS
from detloss.profiling import DispatchCounter
from tests.cases import BOXES_PER_IMAGE, EndToEndCall, cases, count, fwd_bwd, yolo_inputs

CASES = cases()
IDS = [c.name for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_no_host_sync_without_validation(case):
    # varying counts, an empty image included: still no sync
    for counts in ((BOXES_PER_IMAGE,), (0, 3, 12, 1)):
        c = count(case, False, counts)
        assert c.syncs == 0, (case.name, counts, c.sync_ops)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_validation_is_one_sync(case):
    c = count(case, True)
    assert c.syncs <= 1, c.sync_ops


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_launch_budget(case):
    c = count(case, False)
    assert c.ops <= case.ops_target, (c.ops, c.by_name.most_common(15))


def _assert_same(got, want, rtol=1e-4, atol=1e-5):
    (lg, gg), (lw, gw) = got, want
    torch.testing.assert_close(lg, lw, rtol=rtol, atol=atol)
    for a, b in zip(gg, gw, strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_compiles_whole_with_eager_values(case):
    """One compiled graph (fullgraph: a graph break raises) serves batches of different target counts
    with the eager loss and gradients."""
    torch._dynamo.reset()
    crit = case.build(False)
    compiled = torch.compile(crit, fullgraph=True, dynamic=True)
    gen = torch.Generator().manual_seed(1)
    # no duck sizing: images with equal box counts would share a symbol, and a batch whose counts
    # coincide differently would compile again
    with torch.fx.experimental._config.patch(use_duck_shape=False):
        for counts in ((5, 2), (7, 3, 12)):  # no 0 or 1: dynamo specialises those sizes
            preds, targets = case.inputs(gen, counts)
            _assert_same(fwd_bwd(compiled, preds, targets), fwd_bwd(crit, preds, targets))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cuda_matches_cpu(case):
    crit = case.build(False)
    want = fwd_bwd(crit, *case.inputs(torch.Generator().manual_seed(2), (9, 4)))
    preds, targets = case.inputs(torch.Generator().manual_seed(2), (9, 4), torch.float32, "cuda")
    loss, grads = fwd_bwd(crit.to("cuda"), preds, targets)
    _assert_same((loss.cpu(), [g.cpu() for g in grads]), want, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_training_after_an_inference_mode_call(case):
    """Cached per-layout constants made under inference_mode must not reach a later backward."""
    crit = case.build(False)
    preds, targets = case.inputs(torch.Generator().manual_seed(3), (3, 1))
    with torch.inference_mode():
        crit([p.detach() for p in preds], targets)
    loss, grads = fwd_bwd(crit, preds, targets)
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize(
    ("name", "call", "max_ops"),
    [
        # measured with validation: giou 91, ciou 144, focal 32 ops; the peers dispatch 123
        # (ultralytics-style, benchmarks/default_path.py) and 125 (naive) for giou, 179 and 183 for
        # ciou, 34 (naive) for focal
        ("giou", lambda p, t: detloss.iou_loss(p, t, "giou"), 95),
        ("ciou", lambda p, t: detloss.iou_loss(p, t, "ciou"), 150),
        ("focal", lambda x, t: detloss.sigmoid_focal_loss(x, t), 34),
    ],
)
def test_default_path_launches(name, call, max_ops):
    """The elementwise losses as a user calls them (validation on), 10³ boxes / (10³, 80) logits:
    a bounded number of ops forward + backward and exactly one host sync, the validation's."""
    gen = torch.Generator().manual_seed(0)
    if name == "focal":
        x, t = torch.randn(1000, 80, generator=gen), (torch.rand(1000, 80, generator=gen) < 0.02).float()
    else:
        xy = torch.rand(1000, 2, generator=gen) * 600
        t = torch.cat((xy, xy + 1 + torch.rand(1000, 2, generator=gen) * 60), -1)
        x = t + torch.randn(1000, 4, generator=gen) * 8
    x.requires_grad_()
    with DispatchCounter() as c:
        torch.autograd.grad(call(x, t), x)
    assert c.ops <= max_ops, (c.ops, c.by_name.most_common(10))
    assert c.syncs == 1, c.sync_ops


def _boxes(gen: torch.Generator, n: int) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=gen) * 60
    return torch.cat((xy, xy + 1 + torch.rand(n, 2, generator=gen) * 20), -1)


@pytest.mark.parametrize(
    ("name", "call"),
    [
        *[
            (kind, lambda p, t, k=kind, size=size: detloss.iou_loss(p, t, k, validate=False, **size))
            for kind in IOU_KINDS
            for size in [{"image_size": (100, 100)} if kind == "mpdiou" else {}]
        ],
        ("focal", lambda p, t: detloss.sigmoid_focal_loss(p, (t > 40).to(p.dtype), validate=False)),
        ("ia_bce", lambda p, t: detloss.ia_bce_loss(p, t > 40, t / 100, validate=False)),
    ],
)
def test_fused_functions_twice_in_one_dynamic_graph(name, call):
    """Each fused autograd Function (IoU kinds, focal, IA-BCE) applied twice in one graph traced with
    dynamic shapes (dynamo only: the failure is in tracing). A float the Functions read from a module
    (a constant like 4/π²) is a symbolic input there, which dynamo cannot lift into the second
    Function's graph; an end-to-end loss's two branches apply the fused IoU twice."""
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    t = _boxes(gen, 6)
    p1, p2 = (t + torch.randn(6, 4, generator=gen)).requires_grad_(), _boxes(gen, 6).requires_grad_()

    def twice(a, b, target):
        return call(a, target) + call(b, target)

    compiled = torch.compile(twice, fullgraph=True, dynamic=True, backend="eager")
    got = torch.autograd.grad(compiled(p1, p2, t), (p1, p2))
    want = torch.autograd.grad(twice(p1, p2, t), (p1, p2))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def test_end_to_end_loss_traces_with_dynamic_shapes():
    """YOLO26's loss (two YOLOv8Loss branches, CIoU each) as one dynamic graph (dynamo only; the
    slow compile tests run inductor on the training sizes): the eager loss and gradients."""
    torch._dynamo.reset()
    crit = EndToEndCall(yolo26_loss(4, validate=False))
    inputs = yolo_inputs(128, (8, 16, 32), 4 + 4, 4, batch=2, branches=2)
    compiled = torch.compile(crit, fullgraph=True, dynamic=True, backend="eager")
    gen = torch.Generator().manual_seed(1)
    with torch.fx.experimental._config.patch(use_duck_shape=False):
        for counts in ((5, 2), (7, 3)):
            preds, targets = inputs(gen, counts)
            _assert_same(fwd_bwd(compiled, preds, targets), fwd_bwd(crit, preds, targets))


HALF_RTOL = {torch.float16: 1e-3, torch.bfloat16: 1e-2}  # tests/criteria/test_reliability.py's bounds


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize(
    "case", [c for c in CASES if "yolo26" in c.name or "OBB" in c.name], ids=lambda c: c.name
)
def test_half_precision_heads(case, dtype):
    """The end-to-end and oriented criteria (tests/criteria/test_reliability.py covers the others)
    on float16 / bfloat16 heads: computed in float32 (the float32 loss of the same rounded values),
    within the half tolerance of the unrounded loss, finite gradients in the heads' dtype."""
    crit = case.build(False)
    preds, targets = case.inputs(torch.Generator().manual_seed(4), (3, 0, 5, 1))
    ref = crit(preds, targets).total
    half = [p.detach().to(dtype).requires_grad_() for p in preds]
    out = crit(half, targets).total
    grads = torch.autograd.grad(out, half)
    assert out.dtype == torch.float32
    torch.testing.assert_close(
        out, crit([p.detach().float() for p in half], targets).total, rtol=1e-5, atol=0
    )
    torch.testing.assert_close(out, ref, rtol=HALF_RTOL[dtype], atol=0)
    assert all(g.dtype == dtype and torch.isfinite(g).all() for g in grads)
