#!/usr/bin/env bash
# gpu_suite.sh: run pymooncake's GPU checks on an NVIDIA host from the
# checkout, in stages that each fit one device call (docs/gpu.md).
#
#   scripts/gpu_suite.sh STAGE [OUTDIR]        (OUTDIR: $OUT or ./gpu-out)
#
#   build    with the kit (.kit/, ../shared/tools/gpu-kit.sh . .kit): make build
#   go       the Go GPU tests (core/gpu/..., allocator/) with PYMOONCAKE_GPU_TESTS=1
#   py1      pytest: issue 18's *_on_cuda workloads, CUDA IPC, *_on_cuda, RTLD_NOW
#   py2      pytest: the rest of python/tests/gpu (allocators, leaks, transfers,
#            the model workload, printed figures kept)
#   bench    python/tests/gpu/bench_cuda_ipc.py and bench_gpu.py
#   nixl     python/bench/nixl_gpu.py (needs .whl/nixl_cu13-*.whl)
#
# Each stage logs to OUTDIR/<stage>.log and exits non-zero on failure; a
# stage that needs the extension expects an earlier `build` on the same
# machine (pymooncake/_gopy is kept between calls).
set -uo pipefail
stage=${1:?stage}
out=${2:-${OUT:-./gpu-out}}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYMOONCAKE_GPU_TESTS=1 PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH}
log=$out/$stage.log
run() { echo "+ $*" | tee -a "$log"; "$@" 2>&1 | tee -a "$log"; }

case $stage in
build)
  [[ -f .kit/env.sh ]] || { echo "no .kit" | tee "$log"; exit 1; }
  # shellcheck source=/dev/null
  source .kit/env.sh
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$log"
  python3 -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$log"
  run make build
  ;;
go)
  # shellcheck source=/dev/null
  source .kit/env.sh
  run go test -count=1 ./core/gpu/... ./allocator/ ./core/transport/cudaipc/ ./core/transport/inproc/ \
    ./core/transport/hostmem/
  run go test -count=1 -run 'SameHost|CUDAIPC|Issue18' ./core/
  ;;
py1)
  run python3 -m pytest -v -p no:cacheprovider -rs python/tests/gpu/test_issue18.py python/tests/gpu/test_cuda_ipc.py \
    python/tests/gpu/test_on_cuda.py python/tests/gpu/test_rtld_now.py python/tests/test_samehost.py
  ;;
py2)
  run python3 -m pytest -v -s -p no:cacheprovider -rs python/tests/gpu/test_allocators.py python/tests/gpu/test_leak.py \
    python/tests/gpu/test_transfers.py python/tests/gpu/test_model_workload.py python/tests/gpu/test_no_gpu.py
  ;;
bench)
  run python3 python/tests/gpu/bench_cuda_ipc.py --out "$out/cuda_ipc.json"
  run python3 python/tests/gpu/bench_gpu.py --tcp --out "$out/gpu_tcp.json"
  ;;
nixl)
  run python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/nixl_cu13-*.whl
  PYTHONPATH=/tmp/site:$PYTHONPATH run python3 python/bench/nixl_gpu.py
  ;;
*)
  echo "unknown stage $stage" >&2
  exit 2
  ;;
esac
