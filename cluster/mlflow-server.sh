#!/usr/bin/env bash
# The cluster's MLflow tracking server, run on the Ray head: a PostgreSQL backend (many concurrent
# writers: the job's driver, every rank-0 worker and every sweep trial log at once; SQLite serialises
# them and cannot be shared between machines) and artifacts on S3, served through the server
# (`--artifacts-destination`): nodes upload figures and tables over HTTP and need no S3 access for
# it; the server takes its S3 credentials from its environment or the head's instance role (boto3).
#
#   bash cluster/mlflow-server.sh postgres   # once per head: install PostgreSQL, create role + database
#   bash cluster/mlflow-server.sh start      # start in the background, wait until it answers
#   bash cluster/mlflow-server.sh run        # the same in the foreground (a container's command)
#   bash cluster/mlflow-server.sh uri        # the tracking URI the cluster's nodes use
#   bash cluster/mlflow-server.sh stop
#
# Settings (environment):
#   SAR_MLFLOW_BACKEND    database URI; default: PostgreSQL on this machine over its Unix socket with
#                         peer authentication (no password anywhere). For a managed database give
#                         the password as PGPASSWORD or in ~/.pgpass, never in the URI (`ps` shows it).
#   SAR_MLFLOW_ARTIFACTS  artifact root: s3://bucket/prefix on a cluster (default: $SAR_MLFLOW_DIR/artifacts)
#   SAR_S3_ENDPOINT       an S3-compatible endpoint (MinIO, Ceph, ...), as storage.s3_endpoint in specs
#   SAR_MLFLOW_HOST       interface to listen on (default 0.0.0.0: loopback and the private network).
#                         The port stays private: only the cluster's own nodes reach it (the
#                         launcher's security group, a ClusterIP service); people reach it through an
#                         SSH tunnel or a port-forward, as they reach Ray's dashboard.
#   SAR_MLFLOW_ADVERTISE  the address nodes connect to (default: SAR_MLFLOW_HOST, or this machine's
#                         first address when listening on 0.0.0.0)
#   SAR_MLFLOW_PORT       default 5000
#   SAR_MLFLOW_ALLOWED_HOSTS  Host headers to accept (MLflow's default: localhost and private IPs; a
#                         DNS name such as a Kubernetes service must be listed, with localhost)
#   SAR_MLFLOW_WORKERS    server processes (default 4)
#   SAR_MLFLOW_DIR        pid file, log, default artifact folder (default ~/.sar-mlflow)
set -euo pipefail
dir="${SAR_MLFLOW_DIR:-$HOME/.sar-mlflow}"
host="${SAR_MLFLOW_HOST:-0.0.0.0}"
if [[ -n "${SAR_MLFLOW_ADVERTISE:-}" ]]; then advertise="$SAR_MLFLOW_ADVERTISE"
elif [[ "$host" != "0.0.0.0" ]]; then advertise="$host"
else advertise="$(hostname -I 2>/dev/null | awk '{print $1}')"; advertise="${advertise:-127.0.0.1}"
fi
port="${SAR_MLFLOW_PORT:-5000}"
uri="http://$advertise:$port"
backend="${SAR_MLFLOW_BACKEND:-postgresql+psycopg2://$(id -un)@/mlflow?host=/var/run/postgresql}"
artifacts="${SAR_MLFLOW_ARTIFACTS:-$dir/artifacts}"

as_root() { if [[ "$(id -u)" == 0 ]]; then "$@"; else sudo "$@"; fi; }
as_postgres() { if [[ "$(id -u)" == 0 ]]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi; }
healthy() { python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/health', timeout=2)" "$uri" 2>/dev/null; }

server_command() {
  [[ -n "${SAR_S3_ENDPOINT:-}" ]] && export MLFLOW_S3_ENDPOINT_URL="$SAR_S3_ENDPOINT"
  # The GenAI job runner spawns a dozen helper processes; experiment tracking needs none of them.
  export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
  cmd=(mlflow server --backend-store-uri "$backend" --artifacts-destination "$artifacts"
       --host "$host" --port "$port" --workers "${SAR_MLFLOW_WORKERS:-4}")
  [[ -n "${SAR_MLFLOW_ALLOWED_HOSTS:-}" ]] && cmd+=(--allowed-hosts "$SAR_MLFLOW_ALLOWED_HOSTS")
  return 0
}

case "${1:-}" in
  postgres)
    if ! command -v pg_ctlcluster >/dev/null; then
      as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
    fi
    as_root service postgresql start
    user="$(id -un)"
    as_postgres psql -tAc "SELECT 1 FROM pg_roles WHERE rolname='$user'" | grep -q 1 || as_postgres createuser "$user"
    as_postgres psql -tAc "SELECT 1 FROM pg_database WHERE datname='mlflow'" | grep -q 1 \
      || as_postgres createdb -O "$user" mlflow
    python -c "import psycopg2" 2>/dev/null || pip install --quiet psycopg2-binary
    echo "PostgreSQL ready: $backend" ;;
  run)
    server_command
    exec "${cmd[@]}" ;;
  start)
    if healthy; then echo "MLflow already answers on $uri"; exit 0; fi
    mkdir -p "$dir"
    server_command
    # Its own process group (setsid), so that `stop` ends the server and its workers together.
    setsid "${cmd[@]}" >>"$dir/server.log" 2>&1 </dev/null &
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
      kill -TERM -- "-$(cat "$dir/mlflow.pid")" 2>/dev/null || true
      rm -f "$dir/mlflow.pid"
    fi ;;
  *) echo "usage: $0 postgres|start|run|uri|stop" >&2; exit 2 ;;
esac
