#!/usr/bin/env bash
# Issue 12's checks on the `device` tool's H200, in one call (10 minutes at most):
#     [GPU_CHECK_SECONDS=570] bash bench/gpu-check.sh [STAGE ...]   (default: parity starts cold, about 480 s)
# parity: the CUDA parity tests.
# speed:  per stage, prompt to PNG and peak memory, ollimg bf16 and fp8 next to diffusers eager, and
#         the matmul floor (bench/gpu_baseline.py --runs 2 --fp8 --floor; about 250 s). Makes the store.
# all:    speed, with diffusers compiled (compile_repeated_blocks) beside it and 3 timed runs (a
#         true median): issue 12's whole side-by-side table in one run (about 350 s). Makes the store.
# attention: the attention kernels alone at Z-Image's shapes: SDPA's backends, and FlashAttention 4
#         where installed (bench/attention_kernels.py; about 30 s).
# kernels: one compiled block's kernels, per layout and heuristics (bench/block_kernels.py; about 90 s).
# profile: where one bf16 and one fp8 generation's GPU time goes (bench/profile_step.py; needs the store).
# variants: the runtime's text encode and VAE decode against CUDA-graphed, channels-last and
#         compiled variants, bf16 (bench/stage_variants.py; 2-3 min, mostly compiles; needs the store).
# starts: fresh processes to their first and second PNG (bench/gpu_baseline.py --only-starts
#         --starts: compiled with the compile cache as found, then warm; eager). Makes the store.
# warm:   a server's first request for the model and its second, spare runtime on and off,
#         compiled and eager (bench/spare_runtime.py; needs starts first, for the store and cache).
# cold:   the same with the page cache dropped before the first request, spare on: bf16 compiled
#         and eager, then the fp8 model (imported here) compiled.
# Run from the repository root with the wheels the machine lacks in .whl/ (carry [".whl"]):
# diffusers, importlib_metadata, platformdirs, pydantic, pydantic_core, annotated_types,
# typing_inspection, and for the server fastapi, starlette, uvicorn, python-multipart, zstandard,
# anyio, opentelemetry-api. GPU_CHECK_FLAGS: more gpu_baseline.py flags for `speed` and `all`.
# GPU_CHECK_SITE: a further folder of packages (FlashAttention 4's, which
# cannot share /tmp/site: pip --target would replace the folder its wheels share; bench/flash-wheels.sh
# gets them there in three calls). Everything comes back as one archive, $OUT/gpu-check.tgz (the device
# returns at most 8 files). Runs: 2026-12-02 22:52 UTC (parity, starts; the server lacked its
# wheels) and 23:15 UTC (parity starts cold): bench/README.md.
set -uo pipefail
started=$(date +%s)
: "${OUT:?set OUT to the folder that comes back}"
log=/tmp/gpu-check
rm -rf "$log" && mkdir -p "$log"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:${GPU_CHECK_SITE:+$GPU_CHECK_SITE:}$PWD PYTHONUNBUFFERED=1 PATH=/tmp/site/bin:$PATH
pack() { tar czf "$OUT/gpu-check.tgz" -C "$log" .; }
trap pack EXIT
nvidia-smi > "$log/nvidia-smi.txt" 2>&1
left() { echo $(( ${GPU_CHECK_SECONDS:-570} - ($(date +%s) - started) )); }  # the stages share this many seconds
finished() { echo "$1 rc $2 after $(( $(date +%s) - started )) s" | tee -a "$log/$1.log"; }
B="python3 bench/spare_runtime.py --models /tmp/zb/store --device cuda --size 1024 --steps 8 --settle 20 --rounds 1"
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(parity starts cold)
for stage in "${stages[@]}"; do case $stage in
parity)
    timeout 330 python3 -m pytest -q -rs -p no:cacheprovider -m cuda tests/parity > "$log/parity.log" 2>&1
    finished parity $? ;;
speed)
    timeout "$(left)" python3 bench/gpu_baseline.py --work /tmp/zb --runs 2 --fp8 --floor ${GPU_CHECK_FLAGS:-} \
        --json "$log/speed.json" > "$log/speed.log" 2>&1
    finished speed $? ;;
all)
    timeout "$(left)" python3 bench/gpu_baseline.py --work /tmp/zb --runs 3 --fp8 --floor --diffusers-compiled ${GPU_CHECK_FLAGS:-} \
        --json "$log/all.json" > "$log/all.log" 2>&1
    finished all $? ;;
attention)
    timeout "$(left)" python3 bench/attention_kernels.py --json "$log/attention.json" > "$log/attention.log" 2>&1
    finished attention $? ;;
kernels)
    timeout "$(left)" python3 bench/block_kernels.py --json "$log/kernels.json" --code "$log/code" \
        > "$log/kernels.log" 2>&1
    finished kernels $? ;;
profile)
    for m in bf16 fp8; do
        timeout "$(left)" python3 bench/profile_step.py --models /tmp/zb/store --model zimage-random:$m \
            > "$log/profile_$m.txt" 2>&1
        finished profile $?
    done ;;
variants)
    timeout "$(left)" python3 bench/stage_variants.py --models /tmp/zb/store --model zimage-random:bf16 \
        --json "$log/variants.json" > "$log/variants.log" 2>&1
    finished variants $? ;;
starts)
    timeout "$(left)" python3 bench/gpu_baseline.py --work /tmp/zb --runs 1 --only-starts --starts \
        --json "$log/starts.json" > "$log/starts.log" 2>&1
    finished starts $? ;;
warm)
    timeout "$(left)" $B --model zimage-random:bf16 --compile auto off --warmup 0 --json "$log/warm.json" \
        > "$log/warm.log" 2>&1
    finished warm $? ;;
cold)
    timeout "$(left)" $B --model zimage-random:bf16 --compile auto off --warmup 0 --spare on --cold \
        --json "$log/cold_bf16.json" > "$log/cold.log" 2>&1
    finished cold $?
    OLLIMG_MODELS=/tmp/zb/store timeout "$(left)" python3 -m ollimg create zimage-random:fp8 \
        -f /tmp/zb/Z-Image-random -q fp8 >> "$log/cold.log" 2>&1
    timeout "$(left)" $B --model zimage-random:fp8 --compile auto --warmup 1 --spare on --cold \
        --json "$log/cold_fp8.json" >> "$log/cold.log" 2>&1
    finished cold $? ;;
*) echo "unknown stage $stage: parity, speed, all, attention, kernels, profile, variants, starts, warm or cold" >&2; exit 2 ;;
esac; done
