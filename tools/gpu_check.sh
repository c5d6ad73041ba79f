#!/usr/bin/env bash
# One command on a GPU machine: build en_seg's CUDA extension, run every CUDA test, the
# compute-sanitizer checks and the GPU benchmarks, and write one Markdown report.
#
#   tools/gpu_check.sh [--dry-run] [REPORT.md]
#
# Needs Linux, an NVIDIA GPU, python3 with a CUDA torch and pytest (torchvision for the
# model benchmark without mmseg), and nvcc; no OpenMMLab, no network. Stages:
#   1. build: `setup.py build_ext --inplace` for the visible GPU (torch picks its
#      architecture), i.e. en_seg/ops/_C.<this python's ABI>.so in this tree;
#   2. tests: every CUDA test (pytest -k cuda: tests/test_cuda_device.py, the CUDA tests of
#      tests/test_ratio_op.py and tests/test_channel_op.py);
#   3. memcheck and racecheck: tools/sanitize_layer.py under compute-sanitizer, where it is
#      on the PATH;
#   4. benchmarks: tools/benchmark.py layer (EN vs cuDNN BN vs GN(32), the standard and
#      large shapes, float32 and bfloat16 autocast, NCHW and channels_last), layer again
#      with EN's reference under torch.compile (the standard shapes, float32, NCHW),
#      passes (EN's passes over X against GroupNorm's CUDA kernels, the same shapes), and
#      model (DeepLabV3 ResNet-50 output stride 8, EN vs BN vs GN(32), one training
#      iteration at batch 2, 512x512), and roofline (EN vs cuDNN BN at docs/cuda_sass.md's
#      shapes, measured against that page's roofline model and the peak bandwidth).
# A stage's output goes to $LOGS/<stage>.log (default build/gpu-check). The report goes to
# REPORT.md, default docs/gpu_check_<gpu>.md. Exits 1 if any stage failed; after a failed
# build the later stages are skipped. About 5 minutes on one H100 / H200, plus the
# compile stage's six compilations.
#
# --dry-run: no GPU needed; proves the script and its Python paths here: no build (uses
# the existing one), the tests (which skip without a GPU), the benchmarks on the CPU at
# tiny sizes, the report to build/gpu-check/report_dry_run.md by default.
#
# Environment: PYTHON (default python3), LOGS, SANITIZER_TIMEOUT (seconds per sanitizer
# run, default 300).
set -uo pipefail

usage() {
  sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}

dry_run=0
report=
for arg in "$@"; do
  case $arg in
    --dry-run) dry_run=1 ;;
    -h | --help | -*) usage ;;
    *) report=$arg ;;
  esac
done
[[ -z $report || $report == /* ]] || report=$PWD/$report

cd "$(dirname "$0")/.." || exit 1
repo=$(pwd)
python=${PYTHON:-python3}
logs=${LOGS:-build/gpu-check}
sanitizer_timeout=${SANITIZER_TIMEOUT:-300}
mkdir -p "$logs"
export PYTHONUNBUFFERED=1 KINETO_LOG_LEVEL=5

if ((dry_run)); then
  device=cpu
  layer_args=(--shapes '2,64,16,16' --threads 1 --min-run-time 0.01 --repeats 1)
  compile_args=("${layer_args[@]}")
  model_args=(--batch 2 --size 64 --threads 1 --min-run-time 0.01 --repeats 1)
else
  device=cuda
  layer_args=(--shapes standard large --min-run-time 0.2 --repeats 2)
  compile_args=(--shapes standard --min-run-time 0.2 --repeats 2)
  model_args=(--batch 2 --size 512 --min-run-time 1 --repeats 2)
fi

stages=()
failed=0
build_failed=0

# record NAME RESULT SECONDS LOG: one row of the report's stage table.
record() {
  stages+=("| $1 | $2 | $3 s | \`${4#"$repo"/}\` |")
  echo "== $1: $2 ($3 s)"
}

# stage NAME COMMAND...: runs COMMAND with its output in $logs/NAME.log; a failure is
# recorded and the log's end printed.
stage() {
  local name=$1 log="$logs/$1.log" start=$SECONDS status
  shift
  "$@" >"$log" 2>&1
  status=$?
  if ((status == 0)); then
    record "$name" passed $((SECONDS - start)) "$log"
  else
    failed=1
    record "$name" "FAILED (exit $status)" $((SECONDS - start)) "$log"
    tail -n 30 "$log"
  fi
  return "$status"
}

skip() {
  record "$1" "skipped: $2" 0 "$logs/$1.log"
}

# --- machine -------------------------------------------------------------------------
machine=$("$python" - <<'EOF'
import platform
import torch
print(f'- torch {torch.__version__} (CUDA {torch.version.cuda}), Python '
      f'{platform.python_version()}')
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f'- GPU 0 of {torch.cuda.device_count()}: {p.name}, compute capability '
          f'{p.major}.{p.minor}, {p.multi_processor_count} SMs, '
          f'{p.total_memory / 2**30:.0f} GiB')
else:
    print('- no CUDA device visible to torch')
EOF
) || { echo "$python cannot import torch" >&2; exit 1; }
gpu=$("$python" -c 'import torch
print(torch.cuda.get_device_name() if torch.cuda.is_available() else "")')
if ((!dry_run)) && [[ -z $gpu ]]; then
  echo 'torch sees no CUDA device (use --dry-run to check the script without one)' >&2
  exit 1
fi
tools=("- nvcc: $(nvcc --version 2>/dev/null | tail -n 1 || echo 'not found')")
if command -v nvidia-smi >/dev/null; then
  driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n 1)
  tools+=("- driver: $driver")
fi
if command -v compute-sanitizer >/dev/null; then
  tools+=("- $(compute-sanitizer --version | grep -i version | head -n 1)")
fi
if ((dry_run)); then
  default_report=$logs/report_dry_run.md
else
  # 'NVIDIA H200' -> nvidia_h200
  slug=$(tr -cs 'A-Za-z0-9' '_' <<<"${gpu,,}" | sed 's/^_*//; s/_*$//')
  default_report=docs/gpu_check_$slug.md
fi
report=${report:-$default_report}
echo "$machine"

# --- 1. build --------------------------------------------------------------------------
if ((dry_run)); then
  skip build 'dry run'
else
  stage build "$python" setup.py build_ext --inplace --build-temp build/gpu-check/temp ||
    build_failed=1
fi

# --- 2. tests --------------------------------------------------------------------------
if ((build_failed)); then
  skip tests 'build failed'
else
  "$python" -c 'import pytest' 2>/dev/null || echo 'pytest is missing: carry its wheels' >&2
  stage tests "$python" -m pytest -q -rfEs -p no:cacheprovider -k cuda \
    tests/test_cuda_device.py tests/test_ratio_op.py tests/test_channel_op.py
fi

# --- 3. compute-sanitizer --------------------------------------------------------------
for tool in memcheck racecheck; do
  if ((dry_run)); then
    skip "$tool" 'dry run'
  elif ! command -v compute-sanitizer >/dev/null; then
    skip "$tool" 'compute-sanitizer not on the PATH'
  elif ((build_failed)); then
    skip "$tool" 'build failed'
  else
    # Without torch's caching allocator every tensor is its own allocation, so memcheck
    # sees an access past a tensor's end (racecheck, of shared memory, is unaffected).
    # Failed CUDA API calls are not reported: libraries probe the driver with calls that
    # may fail by design, and only the kernels' memory accesses are checked here.
    stage "$tool" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "$sanitizer_timeout" \
      compute-sanitizer --tool "$tool" --report-api-errors no --error-exitcode 1 \
      --print-limit 20 "$python" tools/sanitize_layer.py
  fi
done

# --- 4. benchmarks ---------------------------------------------------------------------
if ((build_failed)); then
  skip benchmark-layer 'build failed'
  skip benchmark-compile 'build failed'
  skip benchmark-passes 'build failed'
  skip benchmark-model 'build failed'
  skip benchmark-roofline 'build failed'
else
  stage benchmark-layer "$python" tools/benchmark.py layer --device "$device" \
    --variants BN 'GN(32)' EN --dtypes float32 bfloat16 --memory-formats nchw channels_last \
    "${layer_args[@]}" --out "$logs/layer.md"
  stage benchmark-compile "$python" tools/benchmark.py layer --device "$device" \
    --variants BN 'GN(32)' EN EN-reference-compiled "${compile_args[@]}" \
    --out "$logs/layer_compiled.md"
  stage benchmark-passes "$python" tools/benchmark.py passes --device "$device" \
    "${compile_args[@]}" --out "$logs/passes.md"
  stage benchmark-model "$python" tools/benchmark.py model --device "$device" \
    "${model_args[@]}" --out "$logs/model.md"
  if ((dry_run)); then
    skip benchmark-roofline 'dry run (a GPU only)'
  else
    stage benchmark-roofline "$python" tools/benchmark.py roofline --out "$logs/roofline.md"
  fi
fi

# --- report ----------------------------------------------------------------------------
# section TITLE FILE: a Markdown section holding FILE's text, or saying it is missing.
section() {
  printf '\n## %s\n\n' "$1"
  if [[ -s $2 ]]; then cat "$2"; else echo "(no result: see the stage table)"; fi
}

# excerpt TITLE PATTERN LOG...: the logs' first 40 lines matching PATTERN, as a text block.
excerpt() {
  local title=$1 pattern=$2 lines
  shift 2
  lines=$(cat "$@" 2>/dev/null | grep -E "$pattern" | head -n 40)
  # shellcheck disable=SC2016  # backquotes: Markdown, not command substitution
  printf '\n## %s\n\n```text\n%s\n```\n' "$title" "${lines:-(not run, or nothing matched)}"
}

mkdir -p "$(dirname "$report")"
{
  printf '# GPU check: %s\n\n' "${gpu:-dry run on the CPU}"
  # shellcheck disable=SC2016  # backquotes: Markdown, not command substitution
  printf 'Generated %s by `tools/gpu_check.sh%s` at commit %s, in %d s.\n\n' \
    "$(date -u +%Y-%m-%dT%H:%MZ)" "$( ((dry_run)) && echo ' --dry-run')" \
    "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" "$SECONDS"
  printf '%s\n' "$machine" "${tools[@]}"
  printf '\n## Stages\n\n| stage | result | time | log |\n|---|---|---:|---|\n'
  printf '%s\n' "${stages[@]}"
  excerpt 'Tests (pytest -k cuda)' '^(FAILED|ERROR|SKIPPED)|[0-9]+ (passed|failed|skipped)' \
    "$logs/tests.log"
  excerpt 'compute-sanitizer' 'SUMMARY|forward \+ backward passes|Error' \
    "$logs/memcheck.log" "$logs/racecheck.log"
  section 'Layer benchmark' "$logs/layer.md"
  section 'Layer benchmark, EN reference under torch.compile' "$logs/layer_compiled.md"
  section 'Where the layer time goes: passes over X against GroupNorm' "$logs/passes.md"
  section 'Model benchmark' "$logs/model.md"
  section 'Against the roofline model' "$logs/roofline.md"
} >"$report"
echo "report: $report"
exit "$failed"
