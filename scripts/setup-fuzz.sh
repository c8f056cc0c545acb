#!/usr/bin/env bash
# Installs cargo-fuzz (pinned) into target/fuzz-tools unless a cargo-fuzz of that version
# is already on PATH. Idempotent and quick when it is present (~1 min to build otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."

version="0.13.2"
export PATH="$PWD/target/fuzz-tools/bin:$PATH"
if cargo fuzz --version 2>/dev/null | grep -q "$version"; then
  exit 0
fi
echo "installing cargo-fuzz $version into target/fuzz-tools"
cargo install --quiet --locked "cargo-fuzz@$version" --root target/fuzz-tools
