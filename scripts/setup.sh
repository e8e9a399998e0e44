#!/usr/bin/env bash
# Installs what walkie-bridge needs to build, demo and test on Debian/Ubuntu.
# Idempotent: packages already present are not fetched again.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Build: libopus-dev + cmake + pkg-config (the opus crate links libopus).
# Tests: opus-tools (opusinfo/opusdec check the Ogg files we write),
#        postgresql (initdb/pg_ctl: the store is tested on PostgreSQL too),
#        espeak-ng + sox (real speech fixtures),
#        mumble-server (murmurd 1.3.4, started by tests/harness on free ports),
#        svxreflector (SvxLink's reflector 19.09, likewise),
#        svxlink-server (svxlink 19.09, a real node on those reflectors, no sound card),
#        mosquitto (2.0.11, started by tests/harness on free ports) and
#        mosquitto-clients (mosquitto_pub/mosquitto_sub: the MQTT tests' third-party
#        client), openssl (throwaway CA and certificates for TLS tests),
#        libasound2-dev (cpal's ALSA backend for the radio's sound card) and
#        alsa-utils, libhamlib-utils (rigctld -m 1, the dummy rig for PTT/DCD),
#        systemd (systemd-analyze verify, systemd-sysusers, systemd-tmpfiles check
#        the files under systemd/; tests/systemd_units.rs).
#        chromium (the live-talk page's end-to-end test drives Debian's headless
#        Chromium with playwright-core from tests/browser; Node.js and npm below).
# Benches: fonts-dejavu-core (the text of the e2e bench's chart, docs/bench/e2e.png,
#        read at run time so nothing links fontconfig).
PACKAGES=(
  build-essential pkg-config cmake libopus-dev
  opus-tools espeak-ng sox
  postgresql
  mumble-server svxreflector svxlink-server mosquitto mosquitto-clients openssl
  libasound2-dev alsa-utils libhamlib-utils
  systemd
  chromium
  fonts-dejavu-core
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

# Debian's mumble-server and mosquitto start system daemons (murmurd on 0.0.0.0:64738,
# mosquitto on port 1883) where an init system runs. Tests start their own (harness:
# free ports, temp dirs); the system ones are not needed, so stop them and keep them
# from starting at boot. Containers often have systemctl without systemd running, or
# no init system at all: handle each case.
quiet_system_service() {
  local service=$1 pidfile=$2
  local sudo=()
  [[ $(id -u) -eq 0 ]] || sudo=(sudo)
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
    if systemctl is-enabled --quiet "$service" 2>/dev/null \
      || systemctl is-active --quiet "$service" 2>/dev/null; then
      echo "setup: stopping and disabling the system $service (tests start their own)" >&2
      "${sudo[@]}" systemctl disable --now "$service" >/dev/null 2>&1 || true
    fi
  elif [[ -x /etc/init.d/$service ]]; then
    # SysV init or none: the init script stops a daemon started from its pid file.
    if [[ -s $pidfile ]]; then
      echo "setup: stopping the system $service (tests start their own)" >&2
      "${sudo[@]}" "/etc/init.d/$service" stop >/dev/null 2>&1 || true
    fi
    command -v update-rc.d >/dev/null && "${sudo[@]}" update-rc.d "$service" disable >/dev/null 2>&1 || true
  fi
}
quiet_system_service mumble-server /run/mumble-server/mumble-server.pid
quiet_system_service mosquitto /run/mosquitto/mosquitto.pid
quiet_system_service svxreflector /run/svxreflector.pid
quiet_system_service svxlink /run/svxlink.pid

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

# Mumble test clients (tests/harness/python/mumble_client.py) use pymumble in a
# second virtualenv, .venv-test, so its pins never disturb Synapse's. pymumble 1.6.1
# (the newest) pins opuslib==3.0.1 and protobuf==3.12.2 itself: protobuf 3.12 (pure
# Python on 3.11) loads pymumble's old generated mumble_pb2, protobuf >= 4 refuses it
# unless PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python. opuslib needs libopus0 at run
# time (libopus-dev above). The harness uses this venv unless WALKIE_TEST_PYTHON names
# another python.
PYMUMBLE_VERSION=1.6.1
TEST_VENV="$ROOT/.venv-test"

pymumble_installed() {
  "$TEST_VENV/bin/python" -c 'import sys, importlib.metadata as m, pymumble_py3, opuslib
sys.exit(m.version("pymumble") != sys.argv[1])' "$PYMUMBLE_VERSION" 2>/dev/null
}

if ! pymumble_installed; then
  PYTHON=${PYTHON:-python3}
  if ! command -v "$PYTHON" >/dev/null || ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    apt_install python3 python3-venv
  fi
  if ! "$TEST_VENV/bin/python" -c '' 2>/dev/null; then
    echo "setup: creating $TEST_VENV" >&2
    "$PYTHON" -m venv --clear "$TEST_VENV"
  fi
  echo "setup: installing pymumble==$PYMUMBLE_VERSION into $TEST_VENV" >&2
  "$TEST_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "pymumble==$PYMUMBLE_VERSION" "opuslib==3.0.1" "protobuf==3.12.2"
  pymumble_installed || { echo "setup: pymumble $PYMUMBLE_VERSION did not install into $TEST_VENV" >&2; exit 1; }
fi

# The end-to-end-encryption test client (tests/harness/python/matrix_e2ee_client.py)
# is matrix-nio with its e2e extra, in the same .venv-test: nio needs neither protobuf
# nor opuslib, so pymumble's pins stay as they are. matrix-nio 0.26 does its Olm and
# Megolm with vodozemac's Python bindings (prebuilt wheels), not libolm;
# --only-binary makes pip fail rather than compile anything if a wheel is ever missing
# for this Python. vodozemac is pinned too: it is the crypto the tests check against.
NIO_VERSION=0.26.0
VODOZEMAC_VERSION=0.10.0

nio_installed() {
  "$TEST_VENV/bin/python" -c 'import sys, importlib.metadata as m, nio, vodozemac
from nio.crypto import ENCRYPTION_ENABLED
sys.exit(not ENCRYPTION_ENABLED or (m.version("matrix-nio"), m.version("vodozemac")) != tuple(sys.argv[1:]))' \
    "$NIO_VERSION" "$VODOZEMAC_VERSION" 2>/dev/null
}

if ! nio_installed; then
  echo "setup: installing matrix-nio[e2e]==$NIO_VERSION into $TEST_VENV" >&2
  "$TEST_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: \
    "matrix-nio[e2e]==$NIO_VERSION" "vodozemac==$VODOZEMAC_VERSION"
  nio_installed || { echo "setup: matrix-nio[e2e] $NIO_VERSION did not install into $TEST_VENV" >&2; exit 1; }
  pymumble_installed || { echo "setup: installing matrix-nio broke pymumble in $TEST_VENV" >&2; exit 1; }
fi

# The live-talk page's browser tests (tests/live_browser.rs, tests/live_app.rs) run
# tests/browser/live.mjs and app.mjs with playwright-core from the committed lock file. playwright-core never downloads
# a browser; the test uses Debian's /usr/bin/chromium.
# Node.js and npm: the machine's own when it has them (a packaged Node.js from
# elsewhere conflicts with Debian's npm); Debian's otherwise.
command -v node >/dev/null || apt_install nodejs
command -v npm >/dev/null || apt_install npm
BROWSER_TESTS="$ROOT/tests/browser"
playwright_wanted=$(node -p "require('$BROWSER_TESTS/package-lock.json').packages['node_modules/playwright-core'].version")
playwright_installed=$(node -p "require('$BROWSER_TESTS/node_modules/playwright-core/package.json').version" 2>/dev/null || true)
if [[ $playwright_installed != "$playwright_wanted" ]]; then
  echo "setup: npm ci in tests/browser (playwright-core $playwright_wanted)" >&2
  (cd "$BROWSER_TESTS" && npm ci --no-audit --no-fund --loglevel=error)
fi

# The second E2EE test client (tests/harness/src/js_trust_client.rs) runs
# tests/matrix-js/trust_client.mjs: matrix-js-sdk 37.5.0 (the last release whose
# engines field accepts Node.js 20) with its Rust crypto, @matrix-org/matrix-sdk-crypto-wasm
# 14.2.1 (pinned too: it is the crypto the trust checks are Element's), from the
# committed lock file. The wasm ships inside the npm package; nothing is fetched when
# the tests run.
MATRIX_JS_TESTS="$ROOT/tests/matrix-js"
matrix_js_versions() {
  # "js-sdk crypto-wasm" as the lock file wants them ($1 = lock) or as installed.
  if [[ $1 == lock ]]; then
    node -p "const p = require('$MATRIX_JS_TESTS/package-lock.json').packages;
      p['node_modules/matrix-js-sdk'].version + ' ' + p['node_modules/@matrix-org/matrix-sdk-crypto-wasm'].version"
  else
    node -p "const fs = require('fs'), v = (n) => JSON.parse(fs.readFileSync('$MATRIX_JS_TESTS/node_modules/' + n + '/package.json')).version;
      v('matrix-js-sdk') + ' ' + v('@matrix-org/matrix-sdk-crypto-wasm')" 2>/dev/null || true
  fi
}
matrix_js_wanted=$(matrix_js_versions lock)
if [[ $(matrix_js_versions installed) != "$matrix_js_wanted" ]]; then
  echo "setup: npm ci in tests/matrix-js (matrix-js-sdk, crypto-wasm: $matrix_js_wanted)" >&2
  (cd "$MATRIX_JS_TESTS" && npm ci --no-audit --no-fund --loglevel=error)
fi

# Servers only Debian 13 ("trixie") ships: mumble-server 1.5 (the Mumble tests run
# against it beside Debian 12's murmurd 1.3.4) and svxreflector 24.02 (beside 19.09). Their libraries are newer than this
# machine's, so they live in a minimal trixie root made by debootstrap from the same
# Debian registry, at .trixie-root (or $WALKIE_TRIXIE_ROOT), and the harness starts
# them with chroot (tests/harness/src/murmur.rs). Made once (~1 min, ~330 MB), then
# reused; a package added to the list below is installed into the existing root.
DEBIAN_MIRROR=${WALKIE_TRIXIE_MIRROR:-http://deb.debian.org/debian}
root_sudo=()
[[ $(id -u) -eq 0 ]] || root_sudo=(sudo)
# debian_root ROOT RELEASE PACKAGE...: a minimal Debian root with PACKAGEs, made
# once by debootstrap (Debian 12's knows trixie too); a PACKAGE added later is
# installed into the existing root. Package caches go: nothing runs from them.
debian_root() {
  local root=$1 release=$2
  shift 2
  local log="$ROOT/target/$release-debootstrap.log"
  if [[ ! -x $root/usr/bin/dpkg-query ]]; then
    command -v debootstrap >/dev/null || apt_install debootstrap
    mkdir -p "$ROOT/target"
    echo "setup: making a Debian $release root at $root ($*)" >&2
    "${root_sudo[@]}" rm -rf "$root.partial"
    "${root_sudo[@]}" debootstrap --variant=minbase --include="$(IFS=,; echo "$*")" \
      "$release" "$root.partial" "$DEBIAN_MIRROR" >"$log" 2>&1 \
      || { echo "setup: debootstrap failed; see $log" >&2; tail -20 "$log" >&2; exit 1; }
    "${root_sudo[@]}" rm -rf "$root.partial"/var/cache/apt/archives/*.deb
    "${root_sudo[@]}" mv "$root.partial" "$root"
  fi
  local missing=() package
  for package in "$@"; do
    "${root_sudo[@]}" chroot "$root" dpkg-query -W -f='${Status}' "$package" 2>/dev/null \
      | grep -q "install ok installed" || missing+=("$package")
  done
  if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]} into $root" >&2
    "${root_sudo[@]}" chroot "$root" apt-get update -qq
    "${root_sudo[@]}" chroot "$root" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends "${missing[@]}"
    "${root_sudo[@]}" rm -rf "$root"/var/cache/apt/archives/*.deb
  fi
}
debian_root "${WALKIE_TRIXIE_ROOT:-$ROOT/.trixie-root}" trixie mumble-server svxreflector

# The Debian package (tests/debian_package.rs): cargo-deb builds it, and it is
# installed into a scratch copy of a minimal Debian 12 root — this machine's
# release, so the library versions `$auto` puts in Depends are there — with what
# its maintainer scripts and checks call (systemd-sysusers, systemd-tmpfiles,
# deb-systemd-helper, systemd-analyze, man). Made once (~1 min, ~250 MB).
CARGO_DEB_VERSION=3.8.0
if [[ $(cargo deb --version 2>/dev/null) != *"$CARGO_DEB_VERSION"* ]]; then
  echo "setup: cargo install cargo-deb $CARGO_DEB_VERSION" >&2
  CARGO_TARGET_DIR="$ROOT/target/cargo-deb-build" \
    cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION" --quiet
  rm -rf "$ROOT/target/cargo-deb-build"
fi
# procps: /bin/kill, the unit's ExecReload (the package depends on it).
debian_root "${WALKIE_PACKAGE_ROOT:-$ROOT/.package-root}" bookworm \
  systemd man-db procps libopus0 libasound2
