#!/usr/bin/env bash
# Installs what pcmoe needs on Debian 12 (build tools, libraries, gnuplot for `pcmoe collab`'s
# figure, the PyTorch used only by tests and benchmarks), fetches the Brown corpus and builds
# everything into build/. pcmoe itself links no BLAS (oneDNN forms its products); the OpenMP
# OpenBLAS is for python3-torch, which without recommends would get the reference BLAS
# (libblas3) and with them OpenBLAS on pthreads, whose threads fight torch's OpenMP ones (its
# training ran at half speed on bench_moe): the test oracle and the bench peer at their best.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

PACKAGES=(build-essential cmake ninja-build pkg-config git ca-certificates gnuplot-nox
          libsentencepiece-dev nlohmann-json3-dev libgtest-dev
          libgrpc++-dev protobuf-compiler libssl-dev libdnnl-dev
          python3 python3-torch libopenblas0-openmp)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

bash scripts/fetch_brown.sh data
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$(nproc)"
echo "setup: built build/pcmoe"
