#!/usr/bin/env bash
# The GPU check, one prepared run (< 10 minutes on one GPU): the test suite on CUDA, then
# every criterion of tests/cases.py timed eager and under torch.compile(mode="reduce-overhead") (CUDA
# graphs), and the yolov5 package's ComputeLoss side by side where it is installed.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        (from the repository root; OUT_DIR default: $OUT or .)
#
# Needs python with torch (CUDA) and pytest; hypothesis for the full suite. Each step has its own
# time limit so that one slow compile cannot eat the others' time; a step that fails or times out is
# reported and the script goes on. Results: OUT_DIR/gpu_check.log (everything) and
# OUT_DIR/criteria_cuda.md and OUT_DIR/criteria_cuda_e2e_obb.md (the criteria tables to paste into
# benchmarks/README.md).
set -u
cd "$(dirname "$0")/.."
out="${1:-${OUT:-.}}"
mkdir -p "$out"
log="$out/gpu_check.log"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
py="${PYTHON:-python}"

step() {  # step LIMIT_SECONDS TITLE COMMAND...
    local limit=$1 title=$2
    shift 2
    echo "=== $title ($(date -u +%H:%M:%S), limit ${limit}s)" | tee -a "$log"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    echo "=== $title: rc=$rc in $((SECONDS - t0)) s" | tee -a "$log"
}

: >"$log"
step 20 "environment" "$py" -c "import torch, detloss; print(torch.__version__, torch.version.cuda, \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO CUDA', detloss.__file__)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$log"

# 1. the suite without the long compile tests, CUDA-only tests included (tests/test_one_graph.py:
#    every criterion on CUDA gives the CPU's values and gradients)
step 130 "tests (not slow)" "$py" -m pytest -q -m "not slow" -p no:cacheprovider tests
# 2. the criteria table on CUDA: eager, and compiled with CUDA graphs (cold compile included), in two
#    steps with their own limits: the seed criteria, then the end-to-end and oriented ones (their
#    compiles are the longest)
table() {  # table LIMIT TITLE OUT_FILE NAME...: the rows of the cases whose name holds a NAME
    local limit=$1 title=$2 file=$3
    shift 3
    step "$limit" "$title" "$py" -c "
import sys, torch
sys.path.insert(0, 'benchmarks')
from bench import criterion_rows, criterion_table
rows = criterion_rows(sys.argv[2:], device='cuda', compile=True, mode='reduce-overhead', repeats=20,
                      min_time=0.5, progress=lambda r: print('  done', r.name, flush=True))
text = criterion_table(rows)
print(text)
open(sys.argv[1], 'w').write(text + '\n')
" "$file" "$@"
}
table 230 "criteria table, CUDA, reduce-overhead" "$out/criteria_cuda.md" \
    YOLOv3 YOLOv4 YOLOv5 "YOLOv8Loss" SSD
table 200 "end-to-end and oriented criteria, CUDA, reduce-overhead" "$out/criteria_cuda_e2e_obb.md" \
    yolo26 OBB
# 3. the original, where installed (never a dependency)
if "$py" -c "import yolov5" 2>/dev/null; then
    step 80 "YOLOv5Loss vs ComputeLoss, CUDA" "$py" benchmarks/compare_yolov5.py --device cuda \
        --mode reduce-overhead --repeats 20
else
    echo "=== yolov5 package not installed: ComputeLoss skipped" | tee -a "$log"
fi
echo "=== done $(date -u +%H:%M:%S)" | tee -a "$log"
