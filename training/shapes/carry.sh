#!/usr/bin/env bash
# Here, between device calls of gpu-train.sh (training/shapes/README.md): makes .carry/shapes, the
# one path the next call carries, and checks that it fits. Run from the repository root:
#     bash training/shapes/carry.sh [FILES_AT]
# - puts the diffusers and importlib_metadata wheels from .whl/ in .carry/shapes/whl/ (once);
# - with FILES_AT (the folder a call's files came back in): keeps its train.log in
#   out/shapes/calls/, puts its ckpt/ in .carry/shapes/ckpt/, or, when the training finished,
#   unpacks the model to out/shapes/model/ beside train-info.json and the grid (and drops the
#   carried checkpoint);
# - adds up what the next call sends (tracked and untracked, not ignored files, and
#   .carry/shapes) and fails if it is over the device tool's 64 MiB.
set -euo pipefail
from=${1:-}
mkdir -p .carry/shapes/whl out/shapes/calls
for wheel in diffusers-0.42.1-py3-none-any.whl importlib_metadata-10.2.0-py3-none-any.whl; do
    if [ ! -f ".carry/shapes/whl/$wheel" ]; then
        cp ".whl/$wheel" .carry/shapes/whl/ || { echo "no .whl/$wheel; fetch it as training/shapes/README.md says" >&2; exit 1; }
    fi
done
if [ -n "$from" ]; then
    cp "$from/train.log" "out/shapes/calls/$(date -u +%Y%m%dT%H%M%SZ).log"
    if [ -d "$from/ckpt" ]; then
        rm -rf .carry/shapes/ckpt
        cp -r "$from/ckpt" .carry/shapes/ckpt
        chmod -R u+w .carry/shapes/ckpt
        python3 -c 'import json, sys; s = json.load(open(sys.argv[1])); print("checkpoint at step %d of %d in .carry/shapes/ckpt" % (s["step"], s["total"]))' .carry/shapes/ckpt/state.json
    fi
    if ls "$from"/model.tar.part* >/dev/null 2>&1; then
        rm -rf out/shapes/model
        cat "$from"/model.tar.part* | tar x -C out/shapes
        cp "$from"/train-info.json out/shapes/
        cp "$from"/heldout-grid-*.png out/shapes/ 2>/dev/null || true
        rm -rf .carry/shapes/ckpt  # finished: a later call starts a new training
        echo "the trained model is in out/shapes/model (train-info.json beside it)"
    fi
fi
sum() { xargs -0 -r stat -c %s -- 2>/dev/null | awk '{s += $1} END {print s + 0}'; }
repo=$( { git ls-files -z; git ls-files -z -o --exclude-standard; } | sum)
carried=$(find .carry/shapes -type f -print0 | sum)
mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1048576}'; }
echo "the next call sends $(mib $((repo + carried))) MiB of 64: the repository $(mib "$repo"), .carry/shapes $(mib "$carried")"
if [ $((repo + carried)) -gt $((64 * 1048576)) ]; then
    echo "over the 64 MiB a device call sends" >&2
    exit 1
fi
