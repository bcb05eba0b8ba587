#!/usr/bin/env bash
# Installs the Debian packages Ferry and its tests use (QEMU, qemu-img, nasm for the lab guest, Chromium
# for the browser tests, iproute2 for the shaped-link tests; libvirt, OpenSSH, certtool and netcat for the
# libvirt lab, tcpdump to look at its traffic). Quick no-op when they are all present.
set -euo pipefail

packages=(qemu-system-x86 qemu-utils nasm chromium iproute2 ca-certificates
  libvirt-daemon-system libvirt-clients libvirt-daemon-driver-qemu openssh-server openssh-client
  gnutls-bin netcat-openbsd tcpdump)
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

# Ferry starts its own libvirtd and sshd inside each libvirt lab machine; installing must not start
# system-wide ones. On a systemd machine the packages enable their units as usual. Without systemd
# (containers, CI), libvirt-daemon-system only starts units when systemd runs, but openssh-server (and
# dbus, pulled in) start their SysV services through invoke-rc.d: a policy-rc.d that says "no" (exit 101,
# as Docker images ship) keeps them stopped for this install. One already there is left as it is.
policy=/usr/sbin/policy-rc.d
own_policy=""
if [ ! -d /run/systemd/system ] && [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# debian-deps.sh: no services started while installing\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod 755 "$policy"
  own_policy=1
fi
cleanup() { if [ -n "$own_policy" ]; then $sudo rm -f "$policy"; fi; }
trap cleanup EXIT

echo "debian-deps: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
node --version | grep -qE '^v(2[0-9]|[3-9][0-9])\.' || echo "debian-deps: warning: Ferry needs Node.js 20 or newer" >&2
