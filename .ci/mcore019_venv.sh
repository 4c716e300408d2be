#!/usr/bin/env bash
# Create .venv-mcore019: Python 3.11 + torch (CPU) + megatron-core 0.19.2 built from its sdist
# (0.19 declares Python >= 3.12; it runs on 3.11 once typing.override is aliased, which
# tests/test_train_entry.py does in its own process). Used only by tests/test_train_entry.py,
# to check `mgn train`'s argument handling and model provider against a real megatron.training.
# Idempotent: does nothing if the venv already imports megatron.training 0.19.2.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${MGN_MCORE019_VENV:-$ROOT/.venv-mcore019}"
PY="${PYTHON:-python3}"
MCORE_VERSION=0.19.2
start=$(date +%s)
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - <<PYEOF 2>/dev/null
import importlib.metadata as m, sys
sys.exit(0 if m.version("megatron-core") == "$MCORE_VERSION" else 1)
PYEOF
then
  echo "mcore019_venv: $VENV already has megatron-core $MCORE_VERSION"
  exit 0
fi
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade "pip>=24" >/dev/null
SDIST_DIR="$(mktemp -d)"
"$VENV/bin/pip" download -q --no-deps --ignore-requires-python --no-binary :all: \
  -d "$SDIST_DIR" "megatron-core==$MCORE_VERSION"
"$VENV/bin/pip" install -q --ignore-requires-python \
  torch==2.13.0 "numpy<2.5" "networkx<3.7" psutil triton pytest pyyaml typing_extensions \
  "$SDIST_DIR"/megatron_core-$MCORE_VERSION.tar.gz
rm -rf "$SDIST_DIR"
"$VENV/bin/python" -W ignore -c "import megatron.core, importlib.metadata as m; print('megatron-core', m.version('megatron-core'))"
echo "mcore019_venv: created $VENV in $(( $(date +%s) - start )) s"
