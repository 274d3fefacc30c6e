"""Target handling shared by the criteria: padding, matching and target building (vectorised).

Everything here works on whole batches: targets are padded to ``(B, M, 4)`` with a validity mask,
so no criterion loops over images or boxes in Python. One module per concept:

- :mod:`.targets`: :func:`pad_targets` and :class:`PaddedTargets`;
- :mod:`.collisions`: "later write wins" where candidates share a target slot;
- :mod:`.darknet`: YOLOv3/v4 target building and the ignore test's best IoU;
- :mod:`.yolov5`: YOLOv5's neighbour-cell matches;
- :mod:`.ssd`: SSD prior matching and hard negative mining;
- :mod:`.hungarian`: one-to-one set matching for DETR-family criteria (scipy, optional);
- :mod:`.dense`: DEIMv2's union of one-to-one matchings;
- :mod:`.tal`: task-aligned assignment (YOLOv8 / YOLO11).
"""

from .collisions import resolve_collisions
from .darknet import YoloAssignment, best_iou_with, build_yolov3_targets, build_yolov4_targets
from .dense import dense_one_to_one
from .hungarian import hungarian_match, hungarian_match_all
from .ssd import PRIOR_IGNORED, PRIOR_NEGATIVE, hard_negative_mask, match_priors
from .tal import CandidateTable, TaskAlignedAssignment, candidate_table, task_aligned_assign
from .targets import PaddedTargets, pad_targets
from .yolov5 import (
    YOLOv5Candidates,
    YOLOv5Layout,
    YOLOv5Matches,
    build_yolov5_targets,
    yolov5_candidates,
    yolov5_layout,
)

__all__ = [
    "PRIOR_IGNORED",
    "PRIOR_NEGATIVE",
    "CandidateTable",
    "PaddedTargets",
    "TaskAlignedAssignment",
    "YOLOv5Candidates",
    "YOLOv5Layout",
    "YOLOv5Matches",
    "YoloAssignment",
    "best_iou_with",
    "build_yolov3_targets",
    "build_yolov4_targets",
    "build_yolov5_targets",
    "candidate_table",
    "dense_one_to_one",
    "hard_negative_mask",
    "hungarian_match",
    "hungarian_match_all",
    "match_priors",
    "pad_targets",
    "resolve_collisions",
    "task_aligned_assign",
    "yolov5_candidates",
    "yolov5_layout",
]
