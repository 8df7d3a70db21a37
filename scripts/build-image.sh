#!/usr/bin/env bash
# Build the plugin image (default tag sshipit:dev) from the repository's unchanged Dockerfile, on a
# machine where no container registry is reachable and the package index needs the host's CA bundle.
# Both final targets of the one build are tagged: TAG is the Drone / Woodpecker image (target `plugin`,
# uid 1000) and TAG-github the GitHub Actions one (target `github`, root, as GitHub requires); they share
# every layer (README.md, "The plugin image").
#
#   scripts/build-image.sh [TAG]          # TAG sshipit:dev -> also sshipit:dev-github (sshipit -> sshipit:github)
#
# How: the host resolves and downloads every wheel the build needs (pip download, with the host's pip
# config and certificates) into a wheelhouse, serves it on 127.0.0.1 for the duration of the build, and
# runs `docker build --network=host --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=http://...`.
# The Dockerfile only sees ordinary pip build args, so on any other machine a plain `docker build .`
# installs from PyPI instead.
#
# Uses $DOCKER_HOST if set (and fails if it does not answer), else starts or reuses the private engine
# of scripts/docker-engine.sh.
# Environment: SSHIPIT_BUILDER=buildkit (default, Debian's /usr/bin/docker) or legacy (DOCKER_BUILDKIT=0);
# SSHIPIT_WHEELHOUSE (default /var/lib/sshipit-ci/wheelhouse); SSHIPIT_REFRESH_WHEELS=1 to re-resolve online.
# Progress goes to stderr; stdout ends with `IMAGE <github tag> <size>` then `IMAGE <tag> <size in bytes>`.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
TAG=${1:-sshipit:dev}
case "${TAG##*/}" in
    *:*) GITHUB_TAG="$TAG-github" ;;
    *) GITHUB_TAG="$TAG:github" ;;
esac
WHEELHOUSE=${SSHIPIT_WHEELHOUSE:-/var/lib/sshipit-ci/wheelhouse}
DOCKER=/usr/bin/docker
[ -x "$DOCKER" ] || DOCKER=docker
PY=${PYTHON:-python3}

log() { printf 'build-image: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [ -z "${DOCKER_HOST:-}" ]; then
    eval "$("$HERE/docker-engine.sh")"
fi
"$DOCKER" info >/dev/null 2>&1 || die "no Docker engine answers at DOCKER_HOST=$DOCKER_HOST"
log "engine: $DOCKER_HOST"

# --- 1. wheelhouse: runtime deps + build backend, as wheels for this platform --------------------
mkdir -p "$WHEELHOUSE"
mapfile -t reqs < <("$PY" - "$REPO/pyproject.toml" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    data = tomllib.load(f)
for req in data["project"].get("dependencies", []) + data["build-system"].get("requires", []):
    print(req)
print("wheel")
EOF
)
# Wheels for the image's Python (from the Dockerfile's FROM python:X.Y...), on this machine's platform.
pyver=$(sed -n 's/^FROM python:\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' "$REPO/Dockerfile" | head -n 1)
log "downloading wheels for Python ${pyver:-?} into $WHEELHOUSE: ${reqs[*]}"
dl=("$PY" -m pip download --quiet --only-binary=:all: ${pyver:+--python-version "$pyver"} --dest "$WHEELHOUSE")
# Offline first: a wheelhouse that already satisfies every requirement is reused as it is (delete it,
# or set SSHIPIT_REFRESH_WHEELS=1, to pick up new releases).
if [ -n "${SSHIPIT_REFRESH_WHEELS:-}" ] \
    || ! "${dl[@]}" --no-index --find-links "$WHEELHOUSE" "${reqs[@]}" >/dev/null 2>&1; then
    "${dl[@]}" "${reqs[@]}" >&2 || die "pip download failed"
fi

# --- 2. serve it on loopback for the build ---------------------------------------------------------
# A stable port when free: the URL is a build arg, and build args are part of Docker's cache key.
PORT=$("$PY" - <<'EOF'
import socket
for port in [*range(47631, 47641), 0]:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as http.server does: TIME_WAIT is fine
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        print(s.getsockname()[1])
        break
EOF
)
"$PY" -m http.server --bind 127.0.0.1 --directory "$WHEELHOUSE" "$PORT" </dev/null >/dev/null 2>&1 &
HTTP_PID=$!
trap 'kill "$HTTP_PID" 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do
    "$PY" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/', timeout=1)" \
        2>/dev/null && break
    sleep 0.1
done

# --- 3. build --------------------------------------------------------------------------------------
case "${SSHIPIT_BUILDER:-buildkit}" in
    buildkit) export DOCKER_BUILDKIT=1 ;;
    legacy) export DOCKER_BUILDKIT=0 ;;
    *) die "SSHIPIT_BUILDER must be buildkit or legacy" ;;
esac
# One snapshot of the build context for both targets: the Dockerfile, .dockerignore and what its allow-list
# (`!path` lines) names. The working tree may change between the two builds; the two tags must not differ.
CONTEXT=$(mktemp /tmp/sshipit-image-context.XXXXXX.tar)
trap 'kill "$HTTP_PID" 2>/dev/null || true; rm -f "$CONTEXT"' EXIT
(
    cd "$REPO"
    shopt -s nullglob
    paths=(Dockerfile .dockerignore)
    while IFS= read -r pattern; do
        # shellcheck disable=SC2206 # the allow-list's globs (LICENSE*) are meant to expand here
        paths+=(${pattern%/})
    done < <(sed -n 's/^!\(.*\)$/\1/p' .dockerignore)
    tar --exclude=__pycache__ -cf "$CONTEXT" "${paths[@]}"
) || die "could not snapshot the build context"

# The github target first, the default (plugin) target second: the second build reuses every layer.
start=$(date +%s%N)
for target in github plugin; do
    tag=$TAG
    [ "$target" = github ] && tag=$GITHUB_TAG
    log "building $tag (target $target, DOCKER_BUILDKIT=$DOCKER_BUILDKIT, wheelhouse at http://127.0.0.1:$PORT/)"
    "$DOCKER" build --network=host --progress=plain --target "$target" \
        --build-arg PIP_NO_INDEX=1 \
        --build-arg "PIP_FIND_LINKS=http://127.0.0.1:$PORT/" \
        -t "$tag" - <"$CONTEXT" >&2 \
        || die "docker build --target $target failed"
done
ms=$((($(date +%s%N) - start) / 1000000))

log "built $GITHUB_TAG and $TAG in $((ms / 1000)).$((ms % 1000 / 100)) s"
for tag in "$GITHUB_TAG" "$TAG"; do
    size=$("$DOCKER" image inspect -f '{{.Size}}' "$tag")
    log "$tag: size $size bytes ($((size / 1000000)) MB)"
    echo "IMAGE $tag $size"
done
