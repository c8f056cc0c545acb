#!/usr/bin/env bash
# Installs the system packages Keel builds against (Debian): libclang for bindgen (the
# rocksdb crate's bindings), g++ (RocksDB is compiled from the crate's source), Debian's
# RocksDB library (which the test builds link instead: see README "RocksDB: compiled from
# source, Debian's for the tests"), and the openssl CLI the
# TLS end-to-end test makes its certificates with (tests/e2e/test_tls.py; the server
# itself uses rustls, never OpenSSL). Idempotent and quick when everything is present.
set -euo pipefail
need=()
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
dpkg -s g++ >/dev/null 2>&1 || need+=(g++)
dpkg -s librocksdb-dev >/dev/null 2>&1 || need+=(librocksdb-dev)
dpkg -s openssl >/dev/null 2>&1 || need+=(openssl)
if ((${#need[@]})); then
  echo "installing system packages: ${need[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
