#!/usr/bin/env bash
# Supply-chain check of the workspace with cargo-deny (policy: deny.toml; README "Supply
# chain"): licences, advisories, bans, sources. Works offline: the RustSec advisory
# database comes from the vendored snapshot scripts/supply-chain/advisory-db.tar.xz
# (upstream commit and date in advisory-db.snapshot), unpacked as the git checkout
# cargo-deny reads.
#
#   scripts/supply-chain.sh                 check (installs cargo-deny if missing)
#   scripts/supply-chain.sh refresh REPO    replace the snapshot from a clone of
#                                           https://github.com/rustsec/advisory-db
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_DENY_VERSION=0.20.2
SNAPSHOT=scripts/supply-chain/advisory-db.tar.xz
STAMP=scripts/supply-chain/advisory-db.snapshot
# cargo-deny's directory name for db-urls = ["https://github.com/rustsec/advisory-db"].
DB_DIR=target/advisory-db/advisory-db-3157b0e258782691

if [ "${1:-}" = "refresh" ]; then
  repo=${2:?usage: scripts/supply-chain.sh refresh PATH_TO_ADVISORY_DB_CLONE}
  git -C "$repo" archive HEAD crates | xz -9 > "$SNAPSHOT"
  git -C "$repo" log -1 --format='%H %cI' > "$STAMP"
  echo "snapshot replaced: $(cat "$STAMP")"
  exit 0
fi

if ! cargo deny --version 2>/dev/null | grep -q "$CARGO_DENY_VERSION"; then
  # A debug build: no optimisation passes to compile (3 min of CPU here); the check
  # itself then takes ~5 s instead of ~2 s.
  cargo install --quiet --locked --debug "cargo-deny@$CARGO_DENY_VERSION"
fi

read -r commit date < "$STAMP"
if [ "$(git -C "$DB_DIR" log -1 --format=%s 2>/dev/null)" != "rustsec/advisory-db $commit" ]; then
  rm -rf "$DB_DIR"
  mkdir -p "$DB_DIR"
  tar -C "$DB_DIR" -xJf "$SNAPSHOT"
  # cargo-deny reads the checkout's HEAD commit time as the database's age.
  git -C "$DB_DIR" init -q
  git -C "$DB_DIR" add -A
  GIT_AUTHOR_DATE="$date" GIT_COMMITTER_DATE="$date" \
    git -C "$DB_DIR" -c user.name=snapshot -c user.email=snapshot@localhost \
    commit -q -m "rustsec/advisory-db $commit"
fi
echo "advisory database: rustsec/advisory-db at ${commit:0:12} ($date)"
# cargo-deny reads `cargo metadata` for every platform, which needs the crates of other
# platforms too (e.g. Windows-only ones the build never downloads): fetched from the crate
# registry first. cargo-deny itself then runs --offline (no advisory-db fetch).
cargo fetch --locked --quiet
cargo deny --offline check --hide-inclusion-graph
