#!/usr/bin/env bash
# On a GPU host: serve a model repository on onnxruntime-gpu (CUDA required: a CPU fallback stays not ready), report
# the provider, and measure adaptive batching on and off (and gthread workers) with 32 keep-alive clients.
#   PY=.venv/bin/python REPO=model_repository MODEL=basicmotions OUT=/tmp deploy/gpu-check.sh
# PY's environment needs seqserve's dependencies with the `gpu` extra (onnxruntime-gpu, never beside onnxruntime).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python} REPO=${REPO:-model_repository} MODEL=${MODEL:-basicmotions} OUT=${OUT:-/tmp}
SECONDS_EACH=${SECONDS_EACH:-8}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
$PY -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
get() { $PY -c "import sys, urllib.request as u; print(u.urlopen(sys.argv[1], timeout=5).read().decode())" "$1"; }
port=19300
serve() {  # label env...
  local label=$1; shift
  env "$@" SEQSERVE_PROVIDER=cuda SEQSERVE_REQUIRE_GPU=true SEQSERVE_WORKERS=${WORKERS:-4} \
      SEQSERVE_BIND=127.0.0.1:$port SEQSERVE_MODEL_REPOSITORY=$REPO SEQSERVE_LOG_REQUESTS=false \
      $PY -m gunicorn --config gunicorn.conf.py 'service:create_app()' > "$OUT/gunicorn-$label.log" 2>&1 &
  local pid=$!
  for _ in $(seq 120); do get "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && break; sleep 0.5; done
  echo "[$label] ready: $(get "http://127.0.0.1:$port/ready" 2>&1 | head -c 400)"
  for shape in "16 100" "1 100"; do
    set -- $shape
    echo "[$label] $MODEL $1x$2 c32 $(PYTHONPATH=. $PY deploy/gpu_load.py $port /v1/models/$MODEL/predict 4 8 "$SECONDS_EACH" $1 $2)"
  done
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
  kill -TERM $pid; wait $pid || true
  port=$((port + 1))
}
serve gevent-batching SEQSERVE_BATCHING=true
serve gevent-nobatching SEQSERVE_BATCHING=false
serve gthread-batching SEQSERVE_BATCHING=true SEQSERVE_WORKER_CLASS=gthread
