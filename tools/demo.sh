#!/usr/bin/env bash
# The main job on data, end to end with the real tools: write a small dataset in the real
# ADE20K (or Cityscapes) layout, train the paper's EN DeepLabV3 R50-D8 config scaled down
# by --cfg-options (small crops, few iterations, no pretrained download), then evaluate
# the checkpoint single-scale and multi-scale + flip in one table (predicted label maps in
# predictions/, painted ones in painted/), and draw the ratios the EN layers chose for
# every validation image (en_seg/analysis).
#
# Settings (environment): DATASET=ade20k|cityscapes, ITERS (default 40), PROCS (1, or
# more for a distributed run through tools/dist_train.sh), ROOT (default .: the data goes
# to ROOT/data/demo/DATASET, the run to ROOT/work_dirs/demo/DATASET, both rewritten).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
DATASET=${DATASET:-ade20k}
ITERS=${ITERS:-40}
PROCS=${PROCS:-1}
ROOT=${ROOT:-.}
data=$ROOT/data/demo/$DATASET
work=$ROOT/work_dirs/demo/$DATASET
case $DATASET in
  ade20k) config=configs/exemplar_norm/deeplabv3_r50-d8_en_8xb2-80k_ade20k-512x512.py
          scale='(128,96)' ;;
  cityscapes) config=configs/exemplar_norm/deeplabv3_r50-d8_en_8xb2-80k_cityscapes-512x1024.py
          scale='(128,64)' ;;
  *) echo "DATASET must be ade20k or cityscapes, got '$DATASET'" >&2; exit 2 ;;
esac

# Each step's full output goes to $work/logs/<step>.log; the terminal gets progress, the
# metrics table and the paths of what was written (a failing step prints its log's end).
logs=$work/logs
logged() {  # NAME COMMAND...
  local name=$1
  shift
  if ! "$@" >"$logs/$name.log" 2>&1; then
    echo "'$name' failed; the end of $logs/$name.log:" >&2
    tail -n 40 "$logs/$name.log" >&2
    exit 1
  fi
}

echo "== 1/4 writing a small $DATASET-layout dataset to $data"
rm -rf "$data" "$work"
mkdir -p "$logs"
"$PYTHON" tools/make_demo_data.py "$DATASET" "$data"

# The paper's config shrunk to CPU size. Pipeline indices: train 2 = RandomResize,
# 3 = RandomCrop; test 1 = Resize. No ImageNet weights: this machine has no internet.
common=(
  model.pretrained=None "model.data_preprocessor.size=(64,64)"
  train_dataloader.dataset.data_root="$data" val_dataloader.dataset.data_root="$data"
  test_dataloader.dataset.data_root="$data"
  train_dataloader.num_workers=0 train_dataloader.persistent_workers=False
  val_dataloader.num_workers=0 val_dataloader.persistent_workers=False
  test_dataloader.num_workers=0 test_dataloader.persistent_workers=False
  "train_dataloader.dataset.pipeline.2.scale=$scale"
  "train_dataloader.dataset.pipeline.3.crop_size=(64,64)"
  "test_dataloader.dataset.pipeline.1.scale=$scale"
)
# Validation during training is off: step 3 evaluates the final checkpoint.
train_only=(
  train_cfg.max_iters="$ITERS" val_cfg=None val_dataloader=None val_evaluator=None
  default_hooks.checkpoint.interval="$ITERS" default_hooks.logger.interval=5
  optim_wrapper.optimizer.lr=0.01 randomness.seed=0
)

echo "== 2/4 training EN DeepLabV3 R50-D8 for $ITERS iterations on $PROCS process(es)"
if [ "$PROCS" -gt 1 ]; then
  train=(env PYTHON="$PYTHON" bash tools/dist_train.sh "$config" "$PROCS")
else
  train=("$PYTHON" tools/train.py "$config")
fi
# The log keeps every line; the terminal shows mmengine's iteration lines, shortened.
"${train[@]}" --work-dir "$work" --cfg-options "${common[@]}" "${train_only[@]}" 2>&1 |
  tee "$logs/train.log" |
  sed -nu 's/.*\(Iter(train) \[ *[0-9]*\/[0-9]*\]\).*  loss: \([0-9.]*\).*/   \1  loss \2/p' ||
  { echo "training failed; the end of $logs/train.log:" >&2; tail -n 40 "$logs/train.log" >&2
    exit 1; }

echo "== 3/4 evaluating $work/iter_$ITERS.pth single-scale and multi-scale + flip"
logged test "$PYTHON" tools/test.py "$config" "$work/iter_$ITERS.pth" --ss-ms \
  --work-dir "$work/test" --out "$work/predictions" --show-dir "$work/painted" \
  --cfg-options "${common[@]}"
# The table tools/test.py prints last, and its note on absent classes.
grep -B1 -A10000 '^| metric (%)' "$logs/test.log"

echo "== 4/4 reading the ratios the EN layers learned (figures in $work/ratios)"
logged ratios "$PYTHON" tools/analyze_ratios.py collect "$config" "$work/iter_$ITERS.pth" \
  --split test --out "$work/ratios" --cfg-options "${common[@]}"
grep -E '^[a-z_]+: ' "$logs/ratios.log" || true
echo "Done. Full logs: $logs; predictions: $work/predictions; painted: $work/painted"
