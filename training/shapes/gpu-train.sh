#!/usr/bin/env bash
# Trains the shapes model on a GPU machine with no package registry (the `device` tool), in one
# call or over several (training/shapes/README.md says which calls and what they carry). Run from
# the repository root:
#     bash training/shapes/gpu-train.sh [train.py arguments...]
#     bash training/shapes/gpu-train.sh --resume .carry/shapes/ckpt [train.py arguments...]
# Budgets count from this script's start. What comes back in $OUT: train.log; then either ckpt/
# (state.json, weights.00, weights.01: the checkpoint, about 21 MiB; carry it into the next call
# as .carry/shapes/ckpt) while the training is unfinished, or train-info.json, heldout-grid-8.png
# and the model directory as model.tar.part00, 01, ... (15 MiB each) when it is finished.
# Take them back here with: bash training/shapes/carry.sh FILES_AT
# Needs torch with CUDA, transformers and tokenizers there, and diffusers (and importlib_metadata)
# as wheels in .carry/shapes/whl/ or else .whl/ (carried; carry.sh puts them in place).
set -euo pipefail
started=$(date +%s.%N)
: "${OUT:?set OUT to the folder that comes back}"
wheels=.whl
[ -d .carry/shapes/whl ] && wheels=.carry/shapes/whl
if ls "$wheels"/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$wheels"/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
# out/ stays on a machine still warm from the last call: its ckpt/full.pt, if it is of the
# checkpoint resumed, makes the resume exact (train.py checks the digest).
run=out/shapes
rm -rf "$run/model" "$run/train-info.json" "$run"/heldout-grid-*.png
python3 -m training.shapes.train --out "$run" --started-at "$started" "$@" 2>&1 | tee "$OUT/train.log"
if [ -f "$run/train-info.json" ]; then
    cp "$run/train-info.json" "$OUT/"
    for grid in "$run"/heldout-grid-*.png; do
        if [ -f "$grid" ]; then cp "$grid" "$OUT/"; fi
    done
    tar cf - -C "$run" model | split -b 15M -d - "$OUT/model.tar.part"
else
    mkdir -p "$OUT/ckpt"
    cp "$run/ckpt/state.json" "$run"/ckpt/weights.* "$OUT/ckpt/"
fi
ls -lR "$OUT"
