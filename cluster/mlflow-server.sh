#!/usr/bin/env bash
# The cluster's MLflow tracking server, run on the Ray head: a PostgreSQL backend (many concurrent
# writers: the job's driver, every rank-0 worker and every sweep trial log at once; SQLite serialises
# them and is never shared between machines) and artifacts on S3, served through the server
# (`--artifacts-destination`): nodes upload figures and tables over HTTP and need no S3 credentials
# for it; the server itself takes them from its environment or the head's instance role (boto3).
#
#   bash cluster/mlflow-server.sh postgres   # once per head: install PostgreSQL, create role + database
#   bash cluster/mlflow-server.sh start      # start in the background, wait until it answers
#   bash cluster/mlflow-server.sh uri        # the tracking URI the cluster's nodes use
#   bash cluster/mlflow-server.sh stop
#
# Settings (environment):
#   SAR_MLFLOW_BACKEND    database URI; default: PostgreSQL on this machine over its Unix socket
#                         (peer authentication: no password anywhere). For a managed database put the
#                         password in ~/.pgpass or PGPASSWORD, never in the URI (it would show in `ps`).
#   SAR_MLFLOW_ARTIFACTS  artifact root; s3://bucket/prefix on a cluster (default: $SAR_MLFLOW_DIR/artifacts)
#   SAR_S3_ENDPOINT       an S3-compatible endpoint (MinIO, Ceph, ...), like storage.s3_endpoint of the specs
#   SAR_MLFLOW_HOST       interface to listen on (default: this node's first address). The port stays
#                         private: open only to the cluster's own nodes (the launcher's security group,
#                         a ClusterIP service); users reach it through an SSH tunnel or a port-forward,
#                         as they reach Ray's dashboard.
#   SAR_MLFLOW_PORT       default 5000
#   SAR_MLFLOW_ALLOWED_HOSTS  extra Host headers to accept (MLflow accepts localhost and private IPs;
#                         a DNS name such as a Kubernetes service must be listed)
#   SAR_MLFLOW_WORKERS    server processes (default 4)
#   SAR_MLFLOW_DIR        pid file and log (default ~/.sar-mlflow)
set -euo pipefail
dir="${SAR_MLFLOW_DIR:-$HOME/.sar-mlflow}"
host="${SAR_MLFLOW_HOST:-$(hostname -I 2>/dev/null | awk '{print $1}')}"
host="${host:-127.0.0.1}"
port="${SAR_MLFLOW_PORT:-5000}"
backend="${SAR_MLFLOW_BACKEND:-postgresql://$(id -un)@/mlflow?host=/var/run/postgresql}"
artifacts="${SAR_MLFLOW_ARTIFACTS:-$dir/artifacts}"
uri="http://$host:$port"

healthy() { python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/health', timeout=2)" "$uri" 2>/dev/null; }

case "${1:-}" in
  postgres)
    if ! command -v pg_ctlcluster >/dev/null; then
      sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
    fi
    sudo service postgresql start
    sudo -u postgres psql -tAc "SELECT 1 FROM pg_roles WHERE rolname='$(id -un)'" | grep -q 1 \
      || sudo -u postgres createuser "$(id -un)"
    sudo -u postgres psql -tAc "SELECT 1 FROM pg_database WHERE datname='mlflow'" | grep -q 1 \
      || sudo -u postgres createdb -O "$(id -un)" mlflow
    python -c "import psycopg2" 2>/dev/null || pip install --quiet psycopg2-binary
    echo "PostgreSQL ready: $backend" ;;
  start)
    if healthy; then echo "MLflow already answers on $uri"; exit 0; fi
    mkdir -p "$dir"
    [[ -n "${SAR_S3_ENDPOINT:-}" ]] && export MLFLOW_S3_ENDPOINT_URL="$SAR_S3_ENDPOINT"
    # The GenAI job runner spawns a dozen helper processes; experiment tracking needs none of them.
    export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
    extra=()
    [[ -n "${SAR_MLFLOW_ALLOWED_HOSTS:-}" ]] && extra+=(--allowed-hosts "$SAR_MLFLOW_ALLOWED_HOSTS")
    setsid mlflow server --backend-store-uri "$backend" --artifacts-destination "$artifacts" \
      --host "$host" --port "$port" --workers "${SAR_MLFLOW_WORKERS:-4}" "${extra[@]}" \
      >>"$dir/server.log" 2>&1 < /dev/null &
    echo $! >"$dir/mlflow.pid"
    for _ in $(seq 120); do
      if healthy; then echo "MLflow: $uri (artifacts: $artifacts)"; exit 0; fi
      kill -0 "$(cat "$dir/mlflow.pid")" 2>/dev/null || break
      sleep 1
    done
    echo "MLflow did not start; the end of $dir/server.log:" >&2; tail -n 20 "$dir/server.log" >&2; exit 1 ;;
  uri) echo "$uri" ;;
  stop)
    if [[ -f "$dir/mlflow.pid" ]]; then
      kill -TERM -- "-$(cat "$dir/mlflow.pid")" 2>/dev/null || true  # the server's whole process group
      rm -f "$dir/mlflow.pid"
    fi ;;
  *) echo "usage: $0 postgres|start|uri|stop" >&2; exit 2 ;;
esac
