#!/usr/bin/env bash
# The GPU checks of fastgen-dm in one run: the CUDA tests, then benchmarks/bench_gpu.py.
#
#   benchmarks/gpu_check.sh --fetch-wheels   # here, with network: wheels the GPU machine lacks, into .whl/
#   benchmarks/gpu_check.sh [--quick]        # on the GPU machine, from the repository root
#
# A bare GPU machine with torch, torchvision, lightning, Pillow and pytest but no package
# registry gets webdataset and PyAV from .whl/ (about 35 MB; carry the folder along). Results:
# the test log and bench_gpu.json in $OUT if set, else in ./gpu_check/.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl webdataset braceexpand av
    exit 0
fi

results="${OUT:-gpu_check}"
mkdir -p "$results"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

nvidia-smi -L || true
# the tests that need CUDA (nvJPEG, NVDEC, normalization, a Trainer on the GPU); the rest run in CI
python3 -m pytest -q -p no:cacheprovider -rs -k "cuda or nvjpeg or nvdec" \
    tests/decode/test_jpeg.py tests/transform/test_image_transform.py tests/datamodules/test_images.py tests/batch/test_transport.py \
    tests/datamodules/test_videos.py 2>&1 | tee "$results/gpu_tests.log" || true
python3 benchmarks/bench_gpu.py --json "$results/bench_gpu.json" "$@"
