#!/usr/bin/env bash
# Prints the Debian mirror this machine's apt already uses (the first non-security URI), for debootstrap:
# SSHIPIT_DEBIAN_MIRROR if set, else /etc/apt/sources.list.d/debian.sources, else /etc/apt/sources.list,
# else deb.debian.org. Used by scripts/docker-engine.sh (the image's base) and tests/test_setup.py (a clean root).
set -euo pipefail
if [ -n "${SSHIPIT_DEBIAN_MIRROR:-}" ]; then echo "$SSHIPIT_DEBIAN_MIRROR"; exit 0; fi
m=""
if [ -r /etc/apt/sources.list.d/debian.sources ]; then
    m=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' \
        /etc/apt/sources.list.d/debian.sources)
fi
if [ -z "$m" ] && [ -r /etc/apt/sources.list ]; then
    m=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }' \
        /etc/apt/sources.list)
fi
echo "${m:-http://deb.debian.org/debian}"
