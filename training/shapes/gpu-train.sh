#!/usr/bin/env bash
# Trains the shapes model on a GPU machine with no package registry (the `device` tool) and
# packs what comes back into $OUT: train.log, train-info.json, heldout-grid-8.png and the model
# directory as model.tar.part00, 01, ... (15 MiB each). Run from the repository root:
#     bash training/shapes/gpu-train.sh [train.py arguments...]
# Needs torch with CUDA, transformers and tokenizers there, and diffusers as a wheel in .whl/
# (carried; training/shapes/README.md says how to fetch it). Restore here with:
#     cat model.tar.part* | tar x
set -euo pipefail
: "${OUT:?set OUT to the folder that comes back}"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
rm -rf out/shapes
python3 -m training.shapes.train --out out/shapes "$@" 2>&1 | tee "$OUT/train.log"
cp out/shapes/train-info.json out/shapes/heldout-grid-8.png "$OUT/"
tar cf - -C out/shapes model | split -b 15M -d - "$OUT/model.tar.part"
ls -l "$OUT"
