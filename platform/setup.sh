#!/usr/bin/env bash
# One-step set-up for sar-platform on a Linux machine: a virtual environment in .venv with the
# project installed (editable), and the Fashion-MNIST data the embedded quickstart trains on.
#
#   bash platform/setup.sh           # runtime install (what `sar run` needs)
#   bash platform/setup.sh --test    # plus the test dependencies
#
# Environment knobs:
#   SAR_VENV=path          where the virtual environment lives (default: .venv in the repository)
#   SAR_PYTHON=python3.11  the interpreter that creates it
#   SAR_TORCH_SPEC=...     the torch requirement installed before the project, e.g.
#                          "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" on a
#                          GPU machine (default: torch==2.13.0, the CPU wheel). Skipped when the
#                          environment already imports a torch >= 2.4.
#   SAR_DATA_ROOT=dir      a folder that already holds the four Fashion-MNIST .gz files; when set
#                          (or when /usr/share/datasets/fashion-mnist exists) nothing is installed.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SAR_VENV:-$repo/.venv}"
python="${SAR_PYTHON:-python3}"
extras=""
for arg in "$@"; do
  case "$arg" in
    --test) extras="[test]" ;;
    -h|--help) sed -n '2,18p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "setup.sh: unknown option '$arg' (use --test or --help)" >&2; exit 2 ;;
  esac
done

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

if [ ! -x "$venv/bin/python" ]; then
  say "creating virtual environment $venv"
  "$python" -m venv "$venv"
fi
pip_install() {
  # Drop the noise some pip set-ups print about mirror folders they skip; keep real errors.
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@" 2> >(grep -v 'is ignored: it is neither' >&2)
}

if ! "$venv/bin/python" -c 'import sys, torch; v = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]); sys.exit(v < (2, 4))' 2>/dev/null; then
  spec="${SAR_TORCH_SPEC:-torch==2.13.0}"
  say "installing $spec"
  # shellcheck disable=SC2086
  pip_install $spec
fi

say "installing sar-platform$extras (editable), at the versions of cluster/requirements.lock"
# The lock pins what the cluster image runs; as constraints it fixes the same versions here and
# leaves out what this machine does not need (the CUDA libraries of the CPU torch).
pip_install -c "$repo/cluster/requirements.lock" -e "$repo$extras"

fmnist_files=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)
has_fmnist() { for f in "${fmnist_files[@]}"; do [ -f "$1/$f" ] || return 1; done; }

if [ -n "${SAR_DATA_ROOT:-}" ]; then
  has_fmnist "$SAR_DATA_ROOT" || { echo "setup.sh: SAR_DATA_ROOT=$SAR_DATA_ROOT lacks one of: ${fmnist_files[*]}" >&2; exit 1; }
  say "Fashion-MNIST: using $SAR_DATA_ROOT"
elif has_fmnist /usr/share/datasets/fashion-mnist; then
  say "Fashion-MNIST: found in /usr/share/datasets/fashion-mnist"
elif command -v apt-get >/dev/null 2>&1; then
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo -n)
  say "Fashion-MNIST: installing the Debian package dataset-fashion-mnist"
  if ! "${sudo[@]}" apt-get install -y -q dataset-fashion-mnist >/dev/null; then
    "${sudo[@]}" apt-get update -q >/dev/null && "${sudo[@]}" apt-get install -y -q dataset-fashion-mnist >/dev/null
  fi
else
  cat >&2 <<'EOF'
[setup] Fashion-MNIST was not found and apt-get is not available. Either
  - install the Debian/Ubuntu package dataset-fashion-mnist, or
  - put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and
    t10k-labels-idx1-ubyte.gz in a folder and export SAR_DATA_ROOT=that/folder, or
  - let the platform download them: `sar data fashion-mnist --download` (needs internet).
EOF
fi
say "done: $venv/bin/sar is ready"
