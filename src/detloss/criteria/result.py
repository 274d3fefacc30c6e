"""What every criterion returns: the total, its named components and each image's share."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class LossResult:
    """A criterion's output.

    Attributes:
        total: scalar tensor to call ``.backward()`` on.
        components: named scalar parts, e.g. ``{"box", "obj", "cls"}``; each key is also the keyword
            of the part's gain in the criterion's constructor, and the gain is applied.
        per_image: ``(B,)``, each image's share of ``total``: every normaliser is the batch's, so
            ``per_image.sum() == total`` up to rounding and the gradient of ``per_image[b]`` is image
            b's part of the gradient of ``total`` (for hard-example mining and per-sample logging;
            computed on the device, no host sync).
    """

    total: Tensor
    components: dict[str, Tensor] = field(default_factory=dict)
    per_image: Tensor | None = None
