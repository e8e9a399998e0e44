#!/usr/bin/env bash
# Installs what walkie-bridge needs to build, demo and test on Debian/Ubuntu.
# Idempotent: packages already present are not fetched again.
set -euo pipefail

# Build: libopus-dev + cmake + pkg-config (the opus crate links libopus).
# Tests: opus-tools (opusinfo/opusdec check the Ogg files we write),
#        postgresql (initdb/pg_ctl: the store is tested on PostgreSQL too),
#        espeak-ng + sox (real speech fixtures).
PACKAGES=(
  build-essential pkg-config cmake libopus-dev
  opus-tools espeak-ng sox
  postgresql
)

missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "setup: need root or sudo to install ${missing[*]}" >&2; exit 1; }
    SUDO=(sudo)
  fi
  "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust from https://rustup.rs" >&2; exit 1; }
