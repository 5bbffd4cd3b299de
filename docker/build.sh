#!/usr/bin/env bash
# Build the tool-server image with no network access from inside the build.
#
#   bash docker/build.sh                     (then: docker compose -f docker/compose.yaml up -d)
#
# 1. wheelhouse: the runtime lock's pinned wheels plus torch (docker/wheelhouse/deps, fetched
#    once and reused while requirements.lock and the torch pin are unchanged) and toolgym itself as a wheel built
#    reproducibly from the working tree (docker/wheelhouse/app), so unchanged sources give a
#    byte-identical wheel and `docker build` reuses every cached layer.
# 2. base image: BASE_IMAGE if set; else python:3.11-slim if present or pullable; else the
#    Debian-package base from docker/make-base-image.sh (made on first use).
# 3. docker build --network host --build-arg BASE_IMAGE=... -t IMAGE docker/
#
# Settings (environment): IMAGE (default toolgym/tools:latest), BASE_IMAGE, PYTHON (default
# .venv/bin/python, else python3; must be Python 3.11 like the image), REFRESH_WHEELS=1 to
# fetch the dependency wheels again, TORCH_INDEX=URL to take torch from that index.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
IMAGE=${IMAGE:-toolgym/tools:latest}
OFFICIAL_BASE=python:3.11-slim
LOCAL_BASE=toolgym/python-base:bookworm
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
WHEELHOUSE=$HERE/wheelhouse
SOURCE_DATE_EPOCH=315532800 # 1980-01-01: fixed timestamps inside the toolgym wheel
export SOURCE_DATE_EPOCH

say() { echo "build: $*"; }
die() {
    echo "build: error: $*" >&2
    exit 1
}
elapsed() { echo "$(($(date +%s) - $1))s"; }

docker info >/dev/null 2>&1 || die "no Docker engine answers (bash docker/ensure-engine.sh)"
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null \
    || die "$PYTHON is not Python 3.11 (set PYTHON=...): the wheels must match the image"
pip_find_links=()
[ -d /opt/wheels ] && pip_find_links=(--find-links /opt/wheels) # local torch CPU wheel, if any

# --- 1a. dependency wheels, from the lock -----------------------------------------------------
# Exactly the runtime lock's pins (hashes checked on download and again in the image), plus
# torch at pyproject's pin: the CPU build where pip finds one (TORCH_INDEX=URL to choose).
t=$(date +%s)
mkdir -p "$WHEELHOUSE"
torch_pin=$(grep -o '"torch==[^"]*"' "$ROOT/pyproject.toml" | tr -d '"')
[ -n "$torch_pin" ] || die "no torch==VERSION pin in pyproject.toml"
{ cat "$ROOT/requirements.lock"; echo "# torch: $torch_pin ${TORCH_INDEX:-}"; } \
    >"$WHEELHOUSE/requirements.lock.new"
if [ "${REFRESH_WHEELS:-0}" != 1 ] && [ -d "$WHEELHOUSE/deps" ] \
    && cmp -s "$WHEELHOUSE/requirements.lock.new" "$WHEELHOUSE/requirements.lock"; then
    rm "$WHEELHOUSE/requirements.lock.new"
    say "dependency wheels are current ($(du -sh "$WHEELHOUSE/deps" | cut -f1))"
else
    say "fetching dependency wheels for requirements.lock into $WHEELHOUSE/deps"
    rm -rf "$WHEELHOUSE/deps.partial"
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --only-binary :all: \
        --require-hashes --no-deps --dest "$WHEELHOUSE/deps.partial" \
        -r "$ROOT/requirements.lock"
    torch_index=()
    [ -n "${TORCH_INDEX:-}" ] && torch_index=(--index-url "$TORCH_INDEX")
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --only-binary :all: \
        --no-deps "${pip_find_links[@]}" "${torch_index[@]}" \
        --dest "$WHEELHOUSE/deps.partial" "$torch_pin"
    rm -rf "$WHEELHOUSE/deps"
    mv "$WHEELHOUSE/deps.partial" "$WHEELHOUSE/deps"
    mv "$WHEELHOUSE/requirements.lock.new" "$WHEELHOUSE/requirements.lock"
    say "dependency wheels: $(du -sh "$WHEELHOUSE/deps" | cut -f1) in $(elapsed "$t")"
fi

# --- 1b. the toolgym wheel, from a clean copy of the working tree ------------------------------
t=$(date +%s)
STAGE=$HERE/.build
rm -rf "$STAGE"
mkdir -p "$STAGE/src" "$STAGE/wheel"
parts=(pyproject.toml README.md toolservers envs rollout trainer)
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # tracked and untracked-but-not-ignored files: no caches, no stale build/ leftovers
    git -C "$ROOT" ls-files -z --cached --others --exclude-standard -- "${parts[@]}" |
        while IFS= read -r -d '' f; do
            [ -f "$ROOT/$f" ] || continue # deleted in the working tree
            mkdir -p "$STAGE/src/$(dirname "$f")"
            cp "$ROOT/$f" "$STAGE/src/$f"
        done
else
    (cd "$ROOT" && tar --exclude=__pycache__ --exclude='*.pyc' -c "${parts[@]}") |
        tar -x -C "$STAGE/src"
fi
if "$PYTHON" -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 70)' \
    2>/dev/null; then
    isolation=(--no-build-isolation) # setuptools is here already (it builds wheels since 70.1)
else
    isolation=()
fi
"$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps "${isolation[@]}" \
    --wheel-dir "$STAGE/wheel" "$STAGE/src" >"$STAGE/wheel.log" 2>&1 || {
    cat "$STAGE/wheel.log" >&2
    die "building the toolgym wheel failed"
}
new_wheel=$(ls "$STAGE"/wheel/toolgym-*.whl)
old_wheel=$(ls "$WHEELHOUSE"/app/toolgym-*.whl 2>/dev/null || true)
if [ -n "$old_wheel" ] && [ "$(basename "$old_wheel")" = "$(basename "$new_wheel")" ] \
    && cmp -s "$old_wheel" "$new_wheel"; then
    say "toolgym wheel unchanged ($(basename "$new_wheel"))"
else
    rm -rf "$WHEELHOUSE/app"
    mkdir -p "$WHEELHOUSE/app"
    cp "$new_wheel" "$WHEELHOUSE/app/"
    say "toolgym wheel built: $(basename "$new_wheel") in $(elapsed "$t")"
fi
rm -rf "$STAGE"

# --- 2. base image ------------------------------------------------------------------------------
t=$(date +%s)
have_image() { docker image inspect "$1" >/dev/null 2>&1; }
if [ -n "${BASE_IMAGE:-}" ]; then
    have_image "$BASE_IMAGE" || docker pull "$BASE_IMAGE" || die "cannot get $BASE_IMAGE"
elif have_image "$OFFICIAL_BASE"; then
    BASE_IMAGE=$OFFICIAL_BASE
elif have_image "$LOCAL_BASE"; then
    BASE_IMAGE=$LOCAL_BASE
elif timeout 300 docker pull --quiet "$OFFICIAL_BASE" >/dev/null 2>&1; then
    BASE_IMAGE=$OFFICIAL_BASE
else
    say "cannot pull $OFFICIAL_BASE; making $LOCAL_BASE from Debian packages"
    bash "$HERE/make-base-image.sh" "$LOCAL_BASE"
    BASE_IMAGE=$LOCAL_BASE
fi
say "base image: $BASE_IMAGE ($(elapsed "$t"))"

# --- 3. the image -----------------------------------------------------------------------------
t=$(date +%s)
say "docker build -t $IMAGE"
docker build --network host --build-arg BASE_IMAGE="$BASE_IMAGE" \
    -t "$IMAGE" -f "$HERE/Dockerfile" "$HERE"
size=$(docker image inspect --format '{{.Size}}' "$IMAGE")
say "built $IMAGE ($((size / 1000000)) MB) in $(elapsed "$t")"
