#!/usr/bin/env bash
# Installs the Debian packages Ferry and its tests use (QEMU, qemu-img, nasm for the lab guest, Chromium
# for the browser tests, iproute2 for the shaped-link tests). Quick no-op when they are all present.
set -euo pipefail

packages=(qemu-system-x86 qemu-utils nasm chromium iproute2 ca-certificates)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "debian-deps: all present (${packages[*]})"
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "debian-deps: run as root or install sudo" >&2; exit 1; }
  sudo="sudo"
fi
echo "debian-deps: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
node --version | grep -qE '^v(2[0-9]|[3-9][0-9])\.' || echo "debian-deps: warning: Ferry needs Node.js 20 or newer" >&2
