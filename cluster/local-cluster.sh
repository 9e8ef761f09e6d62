#!/usr/bin/env bash
# A two-node Ray cluster on this machine's loopback interface, with the cluster MLflow server
# (cluster/mlflow-server.sh) on 127.0.0.1: for trying `sar submit`, `sar jobs` and multi-node runs
# without a real cluster.
#   bash cluster/local-cluster.sh start      # head on 127.0.0.1:6379, Jobs API on 127.0.0.1:8265, MLflow on 127.0.0.1:5000
#   .venv/bin/sar submit jobs/quickstart.yaml --address http://127.0.0.1:8265 --shared-path "$PWD"
#   .venv/bin/sar jobs list --address http://127.0.0.1:8265
#   bash cluster/local-cluster.sh stop       # ends every Ray on this machine (`ray stop --force`)
# Every node is this machine, so every local path is shared (--shared-path). Ray's token: the
# cluster runs with RAY_AUTH_MODE=token when that is exported here, with the token in
# ~/.ray/auth_token (`ray get-auth-token --generate`) or RAY_AUTH_TOKEN; export the same for `sar`.
# MLflow keeps a SQLite file here (one machine, one server process); set SAR_MLFLOW_BACKEND /
# SAR_MLFLOW_ARTIFACTS (and SAR_S3_ENDPOINT) for PostgreSQL and S3 as on a real cluster.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ray="${SAR_RAY:-$repo/.venv/bin/ray}"
# Ray Jobs run their entrypoint (`python -m sar_platform.cli run ...`) with the nodes' PATH: make
# that the environment Ray itself runs from, as it is on a cluster image.
export PATH="$(dirname "$ray"):$PATH"
port="${SAR_RAY_PORT:-6379}"
dashboard="${SAR_RAY_DASHBOARD_PORT:-8265}"
cpus="${SAR_RAY_CPUS_PER_NODE:-1}"
export SAR_MLFLOW_DIR="${SAR_MLFLOW_DIR:-$repo/workspace/cluster-mlflow}"
export SAR_MLFLOW_BACKEND="${SAR_MLFLOW_BACKEND:-sqlite:///$SAR_MLFLOW_DIR/mlflow.db}"
export SAR_MLFLOW_HOST=127.0.0.1 SAR_MLFLOW_WORKERS="${SAR_MLFLOW_WORKERS:-1}"
mlflow_recipe=("bash" "$repo/cluster/mlflow-server.sh")
case "${1:-}" in
  start)
    "${mlflow_recipe[@]}" start
    # The head's Ray, and so every job's driver, tracks to that server; a stopped job's driver gets
    # 30 s to end its MLflow runs before it is killed.
    MLFLOW_TRACKING_URI="$("${mlflow_recipe[@]}" uri)" RAY_JOB_STOP_WAIT_TIME_S=30 \
      "$ray" start --head --port="$port" --node-ip-address=127.0.0.1 --dashboard-host=127.0.0.1 \
      --dashboard-port="$dashboard" --num-cpus="$cpus" --disable-usage-stats
    "$ray" start --address="127.0.0.1:$port" --node-ip-address=127.0.0.1 --num-cpus="$cpus" --disable-usage-stats
    echo "Jobs API: http://127.0.0.1:$dashboard   MLflow: $("${mlflow_recipe[@]}" uri)" ;;
  stop)
    "$ray" stop --force
    "${mlflow_recipe[@]}" stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
