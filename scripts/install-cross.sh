#!/usr/bin/env bash
# Installs the Debian packages that cross-build and emulate aarch64 (see DEVELOPERS.md).
# Idempotent: returns quickly when everything is already there.
set -euo pipefail
pkgs=(rustc-web libstd-rust-web-dev:arm64 rust-web-src gcc-aarch64-linux-gnu libc6-dev-arm64-cross
      qemu-user qemu-system-arm)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-cross: all packages present"
  exit 0
fi
echo "install-cross: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO dpkg --add-architecture arm64
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${pkgs[@]}" >/dev/null
echo "install-cross: done"
