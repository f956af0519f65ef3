#!/usr/bin/env bash
# One device call (the `device` tool's H200, 10 minutes) for issue 12: the CUDA parity tests first,
# then fresh runtime starts (bf16 compiled with the compile cache as found and warm, eager), then a
# server's first image of the model with the spare runtime and without (bench/spare_runtime.py).
# Run from the repository root, with the wheels the machine lacks in .whl/ (carry [".whl"]:
# diffusers, importlib_metadata, platformdirs, pydantic, pydantic_core, annotated_types,
# typing_inspection, and for the server fastapi, starlette, uvicorn, python-multipart, zstandard,
# anyio, opentelemetry-api):
#     bash bench/gpu-check.sh
# (The form before this one, on 2026-12-02 22:52 UTC, lacked the server's wheels: parity and starts
# ran, the server did not start. An earlier form, with fp8 in process and py-spy'd starts, ran on 2026-12-02 15:45-15:53 UTC in
# 505 s; bench/README.md, "Starts re-measured". This form has not run yet.)
# Everything comes back as one archive, $OUT/gpu-check.tgz (the device returns at most 8 files).
set -uo pipefail
started=$(date +%s)
: "${OUT:?set OUT to the folder that comes back}"
log=/tmp/gpu-check
rm -rf "$log" && mkdir -p "$log"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 PATH=/tmp/site/bin:$PATH
pack() { tar czf "$OUT/gpu-check.tgz" -C "$log" .; }
trap pack EXIT
nvidia-smi > "$log/nvidia-smi.txt" 2>&1
timeout 300 python3 -m pytest -q -rs -p no:cacheprovider -m cuda tests/parity > "$log/parity.log" 2>&1
echo "parity rc $? after $(( $(date +%s) - started )) s" | tee -a "$log/parity.log"
timeout $(( 560 - ($(date +%s) - started) )) python3 bench/gpu_baseline.py --work /tmp/zb --runs 1 --only-starts \
    --starts --json "$log/starts.json" > "$log/starts.log" 2>&1
echo "starts rc $? after $(( $(date +%s) - started )) s" | tee -a "$log/starts.log"
# Through the server, the model not loaded yet: with the spare runtime and without, compiled and eager.
timeout $(( 560 - ($(date +%s) - started) )) python3 bench/spare_runtime.py --models /tmp/zb/store \
    --model zimage-random:bf16 --device cuda --size 1024 --steps 8 --compile auto off --settle 20 --rounds 1 \
    --warmup 0 --json "$log/spare.json" > "$log/spare.log" 2>&1
echo "spare rc $? after $(( $(date +%s) - started )) s" | tee -a "$log/spare.log"
