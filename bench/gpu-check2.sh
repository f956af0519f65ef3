#!/usr/bin/env bash
# One device call after the eager-first change (2026-12-02 late): the CUDA parity tests, fresh
# starts (first PNG and second PNG: compiled now runs its first image eagerly if the compiler's
# imports are not done), then first requests through a server with the spare runtime, page cache
# dropped, bf16 (compiled, eager) and fp8 (compiled). Carry [".whl"] (see gpu-check.sh).
#     bash bench/gpu-check2.sh
set -uo pipefail
started=$(date +%s)
: "${OUT:?set OUT to the folder that comes back}"
log=/tmp/gpu-check
rm -rf "$log" && mkdir -p "$log"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 PATH=/tmp/site/bin:$PATH
pack() { tar czf "$OUT/gpu-check.tgz" -C "$log" .; }
trap pack EXIT
left() { echo $(( 570 - ($(date +%s) - started) )); }
timeout 240 python3 -m pytest -q -rs -p no:cacheprovider -m cuda tests/parity > "$log/parity.log" 2>&1
echo "parity rc $? after $(( $(date +%s) - started )) s" | tee -a "$log/parity.log"
timeout $(left) python3 bench/gpu_baseline.py --work /tmp/zb --runs 1 --only-starts --starts \
    --json "$log/starts.json" > "$log/starts.log" 2>&1
echo "starts rc $? after $(( $(date +%s) - started )) s" | tee -a "$log/starts.log"
B="python3 bench/spare_runtime.py --models /tmp/zb/store --device cuda --size 1024 --steps 8 --settle 20 --rounds 1 --spare on --cold"
timeout $(left) $B --model zimage-random:bf16 --compile auto off --warmup 0 --json "$log/cold_bf16.json" > "$log/cold_bf16.log" 2>&1
echo "cold bf16 rc $? after $(( $(date +%s) - started )) s" | tee -a "$log/cold_bf16.log"
OLLIMG_MODELS=/tmp/zb/store timeout $(left) python3 -m ollimg create zimage-random:fp8 -f /tmp/zb/Z-Image-random -q fp8 > "$log/fp8_create.log" 2>&1
timeout $(left) $B --model zimage-random:fp8 --compile auto --warmup 1 --json "$log/cold_fp8.json" > "$log/cold_fp8.log" 2>&1
echo "cold fp8 rc $? after $(( $(date +%s) - started )) s" | tee -a "$log/cold_fp8.log"
