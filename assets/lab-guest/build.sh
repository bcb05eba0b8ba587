#!/usr/bin/env bash
# Build the Ferry lab guest: guest.asm -> ferry-lab-guest.bin (same folder).
# nasm -f bin output depends only on the source, so every build gives the same
# bytes; the image is committed and shipped like firmware.
set -euo pipefail

self="${BASH_SOURCE[0]}"
[[ "$self" == */* ]] && dir="${self%/*}" || dir=.
here="$(cd "$dir" && pwd)"
src="$here/guest.asm"
out="$here/ferry-lab-guest.bin"

if ! command -v nasm >/dev/null 2>&1; then
  echo "build.sh: nasm not found; install it with: apt-get install nasm" >&2
  exit 1
fi

# Assemble to a temporary file first so a failed build never leaves a
# half-written image behind.
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
if ! nasm -f bin -o "$tmp" "$src"; then
  echo "build.sh: nasm failed to assemble $src" >&2
  exit 1
fi
mv -f "$tmp" "$out"
trap - EXIT

size=$(wc -c <"$out")
echo "built $out ($size bytes)"
