#!/usr/bin/env bash
# Make a local Python base image from Debian packages, for hosts that cannot pull images.
#
#   bash docker/make-base-image.sh [NAME]        (default NAME: toolgym/python-base:bookworm)
#
# debootstrap a minimal Debian (python3 3.11, venv, pip, CA certificates, tzdata, netbase) from
# the mirror this host's apt already uses, apply the suite's updates and security fixes, trim
# caches and docs, and `docker import` the tree. Does nothing if NAME already exists (FORCE=1
# rebuilds it). Needs root, debootstrap and a Docker engine (docker/ensure-engine.sh).
#
# Settings (environment): SUITE (default bookworm), MIRROR and SECURITY_MIRROR (default: read
# from /etc/apt/sources.list{,.d/*}), FORCE=1.
set -euo pipefail

NAME=${1:-toolgym/python-base:bookworm}
SUITE=${SUITE:-bookworm}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PACKAGES=python3,python3-venv,python3-pip,ca-certificates,tzdata,netbase

say() { echo "make-base-image: $*"; }
die() {
    echo "make-base-image: error: $*" >&2
    exit 1
}

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$NAME" >/dev/null 2>&1; then
    say "$NAME already exists; nothing to do (FORCE=1 rebuilds it)"
    exit 0
fi
[ "$(id -u)" -eq 0 ] || die "debootstrap needs root"
command -v debootstrap >/dev/null || die "debootstrap is not installed (bash docker/ensure-engine.sh)"
docker info >/dev/null 2>&1 || die "no Docker engine answers (bash docker/ensure-engine.sh)"

# The first mirror URI this host's apt uses for a suite, in either sources format.
host_mirror() { # $1: regex the suite must match
    local files=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources)
    # one-line format: deb [options] URI SUITE COMPONENTS...
    local uri
    uri=$(cat "${files[@]}" 2>/dev/null | sed -E 's/\[[^]]*\]//' |
        awk -v re="^$1\$" '$1 == "deb" && $3 ~ re { print $2; exit }')
    if [ -z "$uri" ]; then
        # deb822 format: stanzas of "Field: value" lines, separated by blank lines
        uri=$(cat "${files[@]}" 2>/dev/null | awk -v re="^$1\$" '
            /^[[:space:]]*$/ { if (u != "" && hit) { print u; exit } u = ""; hit = 0; next }
            /^URIs:/ { u = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i ~ re) hit = 1 }
            END { if (u != "" && hit) print u }' | head -n 1)
    fi
    echo "$uri"
}
MIRROR=${MIRROR:-$(host_mirror "$SUITE")}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-$(host_mirror "$SUITE-security")}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}

mkdir -p "$HERE/rootfs"
ROOTFS=$(mktemp -d "$HERE/rootfs/$SUITE.XXXXXX")
cleanup() {
    for mnt in proc sys; do
        mountpoint -q "$ROOTFS/$mnt" 2>/dev/null && umount -l "$ROOTFS/$mnt"
    done
    rm -rf "$ROOTFS" "$ROOTFS.log"
    rmdir "$HERE/rootfs" 2>/dev/null || true
}
trap cleanup EXIT

start=$(date +%s)
say "debootstrap --variant=minbase $SUITE from $MIRROR into $ROOTFS"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" \
    >"$ROOTFS.log" 2>&1 || {
    tail -n 30 "$ROOTFS.log" >&2
    rm -f "$ROOTFS.log"
    die "debootstrap failed"
}
rm -f "$ROOTFS.log"
say "debootstrap done in $(($(date +%s) - start))s"

# Updates and security fixes, from inside the new tree.
cat >"$ROOTFS/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
printf '#!/bin/sh\nexit 101\n' >"$ROOTFS/usr/sbin/policy-rc.d" # start no services
chmod +x "$ROOTFS/usr/sbin/policy-rc.d"
mount -t proc proc "$ROOTFS/proc"
if chroot "$ROOTFS" sh -c 'apt-get -o APT::Sandbox::User=root update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get -o APT::Sandbox::User=root upgrade -y -qq \
        --no-install-recommends' >"$ROOTFS.log" 2>&1; then
    say "applied $SUITE-updates and $SUITE-security"
else
    tail -n 10 "$ROOTFS.log" >&2
    say "warning: could not apply updates; the image has the $SUITE point release only"
fi
rm -f "$ROOTFS.log"
umount "$ROOTFS/proc"

# Trim: package caches, lists, docs, man pages (a slim image ships none of these).
chroot "$ROOTFS" apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin \
    "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
    "$ROOTFS"/var/cache/debconf/*-old "$ROOTFS"/var/lib/dpkg/*-old \
    "$ROOTFS"/usr/sbin/policy-rc.d
find "$ROOTFS/var/log" -type f -delete
: >"$ROOTFS/etc/resolv.conf" # the engine provides one at run time
python_version=$(chroot "$ROOTFS" python3 -c 'import platform; print(platform.python_version())')

say "importing $(du -sh "$ROOTFS" | cut -f1) as $NAME (python $python_version)"
tar --numeric-owner -C "$ROOTFS" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "debootstrap --variant=minbase $SUITE ($PACKAGES) from $MIRROR" \
    - "$NAME" >/dev/null
say "made $NAME in $(($(date +%s) - start))s"
