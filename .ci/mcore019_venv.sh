#!/usr/bin/env bash
# Create .venv-mcore019: Python 3.11 + torch (CPU) + megatron-core 0.19.2 built from its sdist,
# the environment where Megatron's own pretrain() loop runs in CI (mgn train, the Slurm end-to-end
# test) and where the version-dependent tests re-run.
# 0.19 declares Python >= 3.12 and these machines have 3.11 only (Debian 12; no newer Python is
# reachable): it runs on 3.11 once typing.override exists, which a .pth file of this venv — and of
# no other environment — provides at interpreter start. tensorboard: per-iteration losses as
# Megatron logs them (--tensorboard-dir), read by the end-to-end test.
# Idempotent: does nothing if the venv already has megatron-core 0.19.2 and the compat file.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${MGN_MCORE019_VENV:-$ROOT/.venv-mcore019}"
PY="${PYTHON:-python3}"
MCORE_VERSION=0.19.2
start=$(date +%s)
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - <<PYEOF 2>/dev/null
import importlib.metadata as m, sys
import typing, tensorboard
sys.exit(0 if m.version("megatron-core") == "$MCORE_VERSION" and hasattr(typing, "override") else 1)
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
  torch==2.13.0 "numpy<2.5" "networkx<3.7" psutil triton pytest pyyaml typing_extensions tensorboard \
  "$SDIST_DIR"/megatron_core-$MCORE_VERSION.tar.gz
rm -rf "$SDIST_DIR"
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo 'import typing, typing_extensions; typing.override = getattr(typing, "override", typing_extensions.override)' \
  > "$SITE/mgn_py311_typing_override.pth"
"$VENV/bin/python" -W ignore -c "import megatron.core, importlib.metadata as m; print('megatron-core', m.version('megatron-core'))"
echo "mcore019_venv: created $VENV in $(( $(date +%s) - start )) s"
