"""Smoke test of an installed wheel, run by CI in a clean venv from outside the source tree.

A missing package file, data file or entry point fails here rather than for a user: import the
package from site-packages, run one loss and one criterion, the ``detloss`` command and its version,
and check that an optional feature without its extra names the extra.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")  # torch without numpy: as intended
import torch  # noqa: E402

import detloss  # noqa: E402
from detloss.criteria import YOLOv5Loss  # noqa: E402

here = Path(detloss.__file__).resolve().parent
assert "site-packages" in here.parts, f"detloss imported from {here}, not from the installed wheel"
assert (here / "py.typed").is_file(), "py.typed is not installed"

version = importlib.metadata.version("detloss")
assert detloss.__version__ == version, (detloss.__version__, version)

pred = torch.tensor([[0.0, 0.0, 4.0, 2.0]], requires_grad=True)
target = torch.tensor([[1.0, 1.0, 3.0, 5.0]])
loss = detloss.iou_loss(pred, target, kind="giou")
loss.backward()
# IoU = 2/14, enclosing box 4 × 5 = 20, GIoU = 1/7 − (20 − 14)/20; loss = 1 − GIoU
assert abs(loss.item() - (1 - (1 / 7 - 6 / 20))) < 1e-5, loss.item()
assert torch.isfinite(pred.grad).all()

crit = YOLOv5Loss(num_classes=2)
preds = [torch.randn(1, 3 * 7, 64 // s, 64 // s, requires_grad=True) for s in (8, 16, 32)]
out = crit(preds, [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 30.0]]), "labels": torch.tensor([1])}])
out.total.backward()
assert torch.isfinite(out.total) and set(out.components) == {"box", "obj", "cls"}, out

exe = shutil.which("detloss", path=str(Path(sys.executable).parent))  # this venv's console script
assert exe is not None, f"no detloss command next to {sys.executable}"
cli = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout.strip()
assert cli == f"detloss {version}", cli

try:  # the clean venv has no extra installed: the lab must say which one brings it
    import matplotlib  # noqa: F401
except ImportError:
    lab = subprocess.run([exe, "plot", "--grid", "3", "--losses", "iou", "--out", "lab_out"],
                         capture_output=True, text=True)
    assert lab.returncode == 1 and 'pip install "detloss[lab]"' in lab.stderr, (lab.returncode, lab.stderr)

print(f"smoke test passed: detloss {version} from {here}, torch {torch.__version__}")
