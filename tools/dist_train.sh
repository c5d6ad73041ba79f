#!/usr/bin/env bash
# Usage: bash tools/dist_train.sh CONFIG NUM_PROCS [train.py flags...]
# One process per GPU (per CPU slot without CUDA, with gloo); EN and SN statistics stay
# local to each process. Multi-node: set NNODES, NODE_RANK, MASTER_ADDR, PORT.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG NUM_PROCS [--work-dir DIR] [--resume] [--amp] [--cfg-options ...]" >&2
  exit 2
fi
config=$1
procs=$2
shift 2
here=$(cd "$(dirname "$0")" && pwd)
PYTHONPATH="$here/..${PYTHONPATH:+:$PYTHONPATH}" exec "${PYTHON:-python}" -m torch.distributed.run \
  --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
  --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${PORT:-29500}" \
  --nproc_per_node="$procs" "$here/train.py" "$config" --launcher pytorch "$@"
