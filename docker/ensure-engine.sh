#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine; safe to run any number of times.
#
#   bash docker/ensure-engine.sh
#
# If `docker info` already works, it does nothing. Otherwise, as root on a Debian-like host,
# it installs what is missing with apt (docker.io; debootstrap for docker/make-base-image.sh;
# docker-compose when no Compose is available), starts dockerd in the background and waits
# until it answers. Exits non-zero, saying why, when it cannot.
#
# Settings (environment): ENGINE_WAIT_S (default 60) bounds the wait for the engine;
# DOCKERD_LOG (default /var/log/toolgym-dockerd.log) receives dockerd's output.
set -euo pipefail

ENGINE_WAIT_S=${ENGINE_WAIT_S:-60}
DOCKERD_LOG=${DOCKERD_LOG:-/var/log/toolgym-dockerd.log}

say() { echo "ensure-engine: $*"; }
die() {
    echo "ensure-engine: error: $*" >&2
    exit 1
}

engine_answers() { timeout 10 docker info >/dev/null 2>&1; }
have_compose() {
    timeout 10 docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null
}
is_root() { [ "$(id -u)" -eq 0 ]; }

apt_updated=0
apt_install() {
    command -v apt-get >/dev/null || die "apt-get not found; install $* by hand"
    is_root || die "not root; install $* by hand (or run this script as root)"
    if [ "$apt_updated" -eq 0 ]; then
        say "apt-get update"
        apt-get update -qq || die "apt-get update failed"
        apt_updated=1
    fi
    say "installing $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
        || die "apt-get install $* failed"
}

# 1. Packages. The engine binary first; debootstrap and Compose are wanted, not essential.
missing=()
command -v dockerd >/dev/null || engine_answers || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
else
    say "docker and debootstrap are installed"
fi
command -v docker >/dev/null || die "no docker client on PATH after installing docker.io"

# 2. The engine.
if engine_answers; then
    say "engine already answers ($(docker version --format '{{.Server.Version}}' 2>/dev/null))"
else
    is_root || die "no engine answers and this is not root: start one (sudo dockerd &)"
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
        say "starting docker with systemctl"
        systemctl start docker || say "systemctl start docker failed; trying dockerd directly"
    fi
    if ! engine_answers; then
        # Another dockerd may be starting already; only launch one if none is running.
        if ! pgrep -x dockerd >/dev/null; then
            say "starting dockerd in the background (log: $DOCKERD_LOG)"
            mkdir -p "$(dirname "$DOCKERD_LOG")"
            # setsid: the engine must outlive this script and the make/pytest that ran it.
            setsid dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
        else
            say "dockerd is running but not answering yet; waiting"
        fi
    fi
    waited=0
    until engine_answers; do
        if [ "$waited" -ge "$ENGINE_WAIT_S" ]; then
            tail -n 20 "$DOCKERD_LOG" >&2 2>/dev/null || true
            die "no engine answered within ${ENGINE_WAIT_S}s (see $DOCKERD_LOG)"
        fi
        if ! pgrep -x dockerd >/dev/null; then
            tail -n 20 "$DOCKERD_LOG" >&2 2>/dev/null || true
            die "dockerd exited during start-up (see $DOCKERD_LOG)"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    say "engine answers after ${waited}s ($(docker version --format '{{.Server.Version}}'))"
fi

# 3. Compose, for docker/compose.yaml. Debian bookworm only packages v1 (`docker-compose`).
if have_compose; then
    say "compose is available"
elif is_root && command -v apt-get >/dev/null; then
    apt_install docker-compose
else
    say "warning: neither 'docker compose' nor 'docker-compose' is available"
fi
