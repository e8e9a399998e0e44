#!/usr/bin/env bash
# Installs what walkie-bridge needs to build, demo and test on Debian/Ubuntu.
# Idempotent: packages already present are not fetched again.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Build: libopus-dev + cmake + pkg-config (the opus crate links libopus).
# Tests: opus-tools (opusinfo/opusdec check the Ogg files we write),
#        postgresql (initdb/pg_ctl: the store is tested on PostgreSQL too),
#        espeak-ng + sox (real speech fixtures).
PACKAGES=(
  build-essential pkg-config cmake libopus-dev
  opus-tools espeak-ng sox
  postgresql
)

apt_install() {
  local missing=() package
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$package")
  done
  ((${#missing[@]})) || return 0
  echo "setup: installing ${missing[*]}" >&2
  local sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "setup: need root or sudo to install ${missing[*]}" >&2; exit 1; }
    sudo=(sudo)
  fi
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

apt_install "${PACKAGES[@]}"

command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust from https://rustup.rs" >&2; exit 1; }

# Integration tests run a real Synapse (tests/harness). It lives in a virtualenv at
# .venv-synapse; the harness uses it unless WALKIE_SYNAPSE_PYTHON names another python.
SYNAPSE_VERSION=1.163.2
VENV="$ROOT/.venv-synapse"

synapse_installed() {
  # (synapse.__version__ would append git details: the venv sits in a git work tree.)
  "$VENV/bin/python" -c 'import sys, importlib.metadata as m, synapse
sys.exit(m.version("matrix-synapse") != sys.argv[1])' "$SYNAPSE_VERSION" 2>/dev/null
}

if ! synapse_installed; then
  PYTHON=${PYTHON:-python3}
  # Debian ships venv/ensurepip separately (python3-venv); a bare machine may lack python3.
  if ! command -v "$PYTHON" >/dev/null || ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    apt_install python3 python3-venv
  fi
  if ! "$VENV/bin/python" -c '' 2>/dev/null; then
    # Missing, or made by an interpreter that is gone: (re)create it.
    echo "setup: creating $VENV" >&2
    "$PYTHON" -m venv --clear "$VENV"
  fi
  echo "setup: installing matrix-synapse==$SYNAPSE_VERSION into $VENV" >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "matrix-synapse==$SYNAPSE_VERSION"
  synapse_installed || { echo "setup: matrix-synapse $SYNAPSE_VERSION did not install into $VENV" >&2; exit 1; }
fi
