#!/usr/bin/env bash
# One command from a fresh clone to a result:
#   bash quickstart.sh train [recipe flags...]   set up .venv, then: python recipes/dpo_lora.py (one process)
#   bash quickstart.sh test  [pytest flags...]   set up .venv, then: the test suite
# Set-up is idempotent and skipped when pyproject.toml has not changed since the last one.
# Torch is installed first, on its own (TORCH_SPEC, default torch==2.13.0), so no later step can pull a
# different build; on a GPU machine pre-install the CUDA torch you want or set TORCH_SPEC.
set -euo pipefail
cd "$(dirname "$0")"
task="${1:-}"; shift || true
venv="${VENV:-.venv}"
python="${PYTHON:-python3}"

setup() {
  if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
  fi
  local stamp="$venv/.dpo-recipes-installed" want
  want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return
  fi
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "${TORCH_SPEC:-torch==2.13.0}"
  fi
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[dev]"
  echo "$want" > "$stamp"
}

case "$task" in
  train)
    setup
    # One process needs no launcher (accelerate launch --num_processes 1 runs the same thing), and without one a
    # Ctrl-C prints only the recipe's line saying where it stopped, not also the launcher's traceback.
    exec "$venv/bin/python" recipes/dpo_lora.py "$@"
    ;;
  test)
    setup
    exec "$venv/bin/python" -m pytest "$@"
    ;;
  *)
    echo "usage: bash quickstart.sh train|test [args...]" >&2
    exit 2
    ;;
esac
