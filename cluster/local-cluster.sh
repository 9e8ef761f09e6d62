#!/usr/bin/env bash
# A two-node Ray cluster on this machine's loopback interface: for trying `sar submit` and
# multi-node runs without a real cluster.
#   bash cluster/local-cluster.sh start      # head on 127.0.0.1:6379, dashboard on 127.0.0.1:8265
#   .venv/bin/sar submit jobs/quickstart.yaml --address http://127.0.0.1:8265
#   bash cluster/local-cluster.sh stop
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ray="${SAR_RAY:-$repo/.venv/bin/ray}"
# Ray Jobs run their entrypoint (`python -m sar_platform.cli run ...`) with the nodes' PATH: make
# that the environment Ray itself runs from, as it is on a cluster image.
export PATH="$(dirname "$ray"):$PATH"
port="${SAR_RAY_PORT:-6379}"
dashboard="${SAR_RAY_DASHBOARD_PORT:-8265}"
cpus="${SAR_RAY_CPUS_PER_NODE:-1}"
case "${1:-}" in
  start)
    "$ray" start --head --port="$port" --node-ip-address=127.0.0.1 --dashboard-host=127.0.0.1 \
      --dashboard-port="$dashboard" --num-cpus="$cpus" --disable-usage-stats
    "$ray" start --address="127.0.0.1:$port" --node-ip-address=127.0.0.1 --num-cpus="$cpus" --disable-usage-stats
    echo "dashboard / Jobs API: http://127.0.0.1:$dashboard" ;;
  stop) "$ray" stop --force ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
