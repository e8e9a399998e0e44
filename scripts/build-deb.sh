#!/usr/bin/env bash
# Builds the Debian package with cargo-deb: target/debian/walkie-bridge_<version>_<arch>.deb
#
#   scripts/build-deb.sh                    release build, then the package
#   scripts/build-deb.sh --profile dev      the package of the debug build (the tests')
#                        --no-build         package what is already built
#                        --deb-version V    under another Debian version
#                        --output FILE      to FILE
#                        --fast             compressed quickly (larger)
#
# Needs cargo-deb (scripts/setup.sh installs it: cargo install cargo-deb --locked).
# What is generated (the unit with /usr/bin paths, the man page, completions) is
# staged in target/deb-assets, where Cargo.toml's [package.metadata.deb] takes it.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

profile=release
build=yes
deb_args=()
while (($#)); do
  case $1 in
    --profile) profile=$2; shift 2 ;;
    --no-build) build=; shift ;;
    --deb-version) deb_args+=(--deb-version "$2"); shift 2 ;;
    --output) deb_args+=(--output "$2"); shift 2 ;;
    --fast) deb_args+=(--fast); shift ;;
    *) echo "build-deb: unknown argument $1" >&2; exit 2 ;;
  esac
done

[[ -z $build ]] || cargo build --locked --profile "$profile" --bin walkie-bridge
target_dir=${CARGO_TARGET_DIR:-target}
case $profile in
  dev | test) binary=$target_dir/debug/walkie-bridge ;;
  *) binary=$target_dir/$profile/walkie-bridge ;;
esac

stage=target/deb-assets
rm -rf "$stage"
mkdir -p "$stage"
# The unit as in systemd/, for a binary in /usr/bin; its by-hand install notes go.
{
  echo "# walkie-bridge as a system service, installed by the walkie-bridge package."
  echo "# systemctl reload walkie-bridge re-reads the config (SIGHUP)."
  sed -e '1,/^\[Unit\]/{/^#/d}' -e 's#/usr/local/bin/#/usr/bin/#g' systemd/walkie-bridge.service
} >"$stage/walkie-bridge.service"
cp systemd/sysusers.d/walkie-bridge.conf "$stage/walkie-bridge.sysusers"
cp systemd/tmpfiles.d/walkie-bridge.conf "$stage/walkie-bridge.tmpfile"
"$binary" manpage | gzip -9n >"$stage/walkie-bridge.1.gz"
"$binary" completions bash >"$stage/walkie-bridge.bash"
"$binary" completions zsh >"$stage/_walkie-bridge"
"$binary" completions fish >"$stage/walkie-bridge.fish"

# cargo-deb takes target/release/walkie-bridge from the profile's folder.
cargo deb --no-build --locked --profile "$profile" "${deb_args[@]}"
