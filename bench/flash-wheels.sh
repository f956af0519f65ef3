#!/usr/bin/env bash
# FlashAttention 4's wheels for the `device` tool's H200 (Python 3.12, torch 2.11+cu130 there), cut
# to fit its calls: each call carries at most 64 MiB with the working tree (about 34 MiB, most of it
# the built-in model), and the CUDA 13 library wheel alone is 92 MB. So the wheels go as three
# carried folders, .fa4a, .fa4b and .fa4c (ignored by .gitignore), one per call, each
# first copied to /tmp/parts there; the third call assembles them:
#     bash bench/flash-wheels.sh                        # here: downloads, packs, splits (~4 min: xz -9)
#     call 1, carry [".whl", ".fa4a"]: mkdir -p /tmp/parts && cp .fa4a/* /tmp/parts/ && ...
#     call 2, carry [".fa4b"]:         cp .fa4b/* /tmp/parts/ && ...
#     call 3, carry [".fa4c"]:         bash bench/flash-wheels.sh install && GPU_CHECK_SITE=$FLASH_SITE ...
# with FLASH_SITE=/tmp/fa4site:/tmp/fa4site/nvidia_cutlass_dsl/dsl_packages (the package's .pth file
# is not read from PYTHONPATH). The machine stays warm 30 s after a call: send the next one at once.
# .whl (diffusers and the server's wheels, gpu-check.sh's header) must leave room: keep zstandard out
# (only the `cold` stage's server needs it). Sizes as of 2026-12-03: .fa4a 21.0 MB, .fa4b 31.0, .fa4c 21.7.
set -euo pipefail
if [ "${1:-}" = install ]; then  # on the device, in the third call
    mkdir -p /tmp/parts /tmp/fa4site
    cp .fa4c/cu13.xz.c /tmp/parts/
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/fa4site .fa4c/*.whl
    cat /tmp/parts/cu13.xz.a /tmp/parts/cu13.xz.b /tmp/parts/cu13.xz.c | xz -d | tar x -C /tmp/fa4site
    PYTHONPATH=/tmp/fa4site:/tmp/fa4site/nvidia_cutlass_dsl/dsl_packages python3 -c "import flash_attn.cute.interface"
    exit
fi
work=$(mktemp -d)
P="--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
   --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d $work"
python3 -m pip download -q $P flash-attn-4==4.0.0b40 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1 \
    nvidia-cutlass-dsl-libs-core==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1 apache-tvm-ffi==0.1.15.post2 \
    torch-c-dlpack-ext==0.1.5 quack-kernels==0.6.5
mkdir -p "$work/cu13"
(cd "$work/cu13" && unzip -q ../nvidia_cutlass_dsl_libs_cu13-*.whl && tar cf - . | xz -9e -T0 > "$work/cu13.tar.xz")
rm -rf .fa4a .fa4b .fa4c && mkdir .fa4a .fa4b .fa4c
piece() { dd if="$work/cu13.tar.xz" of="$1" bs=1M iflag=skip_bytes,count_bytes skip="$2" ${3:+count=$3} status=none; }
piece .fa4a/cu13.xz.a 0 21000000
piece .fa4b/cu13.xz.b 21000000 31000000
piece .fa4c/cu13.xz.c 52000000
find "$work" -maxdepth 1 -name '*.whl' ! -name 'nvidia_cutlass_dsl_libs_cu13-*' -exec cp {} .fa4c/ \;
rm -rf "$work"
du -sh .fa4a .fa4b .fa4c
