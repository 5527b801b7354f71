# Sourced by scripts/demo.sh and scripts/test.sh: make (once) and activate ./.venv with xrayfeat installed.
# Needs only Python 3.11+ and pip; everything else comes from the package index.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${XRAYFEAT_VENV:-$root/.venv}"
python="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x "$venv/bin/python" ]; then
  echo "creating $venv with $python" >&2
  "$python" -m venv "$venv"
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"
stamp="$venv/.xrayfeat-installed"
if [ ! -f "$stamp" ] || [ "$root/setup.cfg" -nt "$stamp" ]; then
  echo "installing xrayfeat and its dependencies into $venv (first run: a few minutes)" >&2
  python -m pip install --quiet --upgrade pip
  python -m pip install --quiet -e "$root[test]"
  touch "$stamp"
fi
cd "$root"
