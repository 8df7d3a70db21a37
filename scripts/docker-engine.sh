#!/usr/bin/env bash
# Start (or reuse) a private Docker engine on this machine and make sure the base image the
# Dockerfile names (python:3.11-slim) exists in it, even with no container registry reachable.
#
# Idempotent and safe to run concurrently (one flock). Progress goes to stderr; the last line on
# stdout is `export DOCKER_HOST=unix://...`, so callers can do:
#     eval "$(scripts/docker-engine.sh)"
# The same line is also written to $SSHIPIT_CI_RUN/docker.env (default /run/sshipit-ci/docker.env).
#
# Layout (all overridable by environment):
#   SSHIPIT_CI_STATE=/var/lib/sshipit-ci   persistent: dockerd data-root, cached debootstrap tarball
#   SSHIPIT_CI_RUN=/run/sshipit-ci         volatile: socket, exec-root, pidfile, daemon log
#   SSHIPIT_DEBIAN_MIRROR                  default: first Debian URI from /etc/apt/sources.list.d/debian.sources
#
# Needs root (apt-get, dockerd, debootstrap). Stop the engine with: kill -TERM "$(cat /run/sshipit-ci/dockerd.pid)"
set -euo pipefail

STATE=${SSHIPIT_CI_STATE:-/var/lib/sshipit-ci}
RUN=${SSHIPIT_CI_RUN:-/run/sshipit-ci}
SOCK="$RUN/docker.sock"
PIDFILE="$RUN/dockerd.pid"
LOG="$RUN/dockerd.log"
BASE_TAG=python:3.11-slim
BASE_TAR="$STATE/base/python-3.11-slim-bookworm-rootfs.tar"
DOCKER=/usr/bin/docker # Debian's client (BuildKit-capable); /usr/local/bin/docker may lack buildx

log() { printf 'docker-engine: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"
mkdir -p "$STATE" "$RUN"
chmod 0755 "$STATE" "$RUN"

exec 9>"$STATE/engine.lock"
flock 9

export DOCKER_HOST="unix://$SOCK"

# --- 1. packages --------------------------------------------------------------------------
missing=()
[ -x /usr/sbin/dockerd ] && [ -x "$DOCKER" ] || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} with apt"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${missing[@]}" >&2; then
        apt-get update >&2
        apt-get install -y --no-install-recommends "${missing[@]}" >&2
    fi
fi

# --- 2. daemon ----------------------------------------------------------------------------
engine_up() { "$DOCKER" info >/dev/null 2>&1; }

start_dockerd() {
    local driver=$1 data="$STATE/dockerd/$1"
    mkdir -p "$data" "$RUN/exec"
    rm -f "$SOCK" "$PIDFILE"
    log "starting dockerd (storage-driver=$driver, data-root=$data)"
    # setsid + all fds redirected: the daemon outlives this script and holds no caller's pipe or lock.
    setsid /usr/sbin/dockerd \
        --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false --bridge=none \
        --storage-driver="$driver" --data-root="$data" --exec-root="$RUN/exec" \
        --pidfile="$PIDFILE" --host="$DOCKER_HOST" \
        </dev/null >>"$LOG" 2>&1 8>&- 9>&- &
    local pid=$!
    for _ in $(seq 1 120); do
        engine_up && return 0
        kill -0 "$pid" 2>/dev/null || { [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; } || break
        sleep 0.5
    done
    kill -TERM "$pid" 2>/dev/null || true
    log "dockerd ($driver) did not come up; last log lines:"
    tail -n 15 "$LOG" >&2 || true
    return 1
}

if engine_up; then
    log "reusing running engine at $DOCKER_HOST"
else
    if [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
        oldpid=$(cat "$PIDFILE")
        if [ "$(cat "/proc/$oldpid/comm" 2>/dev/null)" = dockerd ]; then
            log "dockerd $oldpid is alive but not answering; stopping it"
            kill -TERM "$oldpid" || true
            for _ in $(seq 1 40); do kill -0 "$oldpid" 2>/dev/null || break; sleep 0.25; done
        fi
    fi
    # Stale exec-root state from a dead daemon confuses containerd; dockerd leaves netns mounts behind.
    awk -v p="$RUN/exec/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    rm -rf "$RUN/exec" 2>/dev/null || log "warning: could not clear $RUN/exec"
    start_dockerd overlay2 || start_dockerd vfs || die "could not start dockerd (see $LOG)"
fi

# --- 3. base image ------------------------------------------------------------------------
debian_mirror() { "$(dirname "${BASH_SOURCE[0]}")/debian-mirror.sh"; }

make_rootfs_tar() {
    local root mirror
    root=$(mktemp -d /tmp/sshipit-pyroot.XXXXXX)
    mirror=$(debian_mirror)
    log "debootstrapping Debian bookworm + python3 from $mirror (about a minute)"
    if ! debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,python-is-python3 \
            bookworm "$root" "$mirror" >&2; then
        rm -rf "$root"
        die "debootstrap failed"
    fi
    chroot "$root" apt-get clean
    # Trim like debian:bookworm-slim does (docs, man pages, translations); keep copyright files.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log \
        "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
        "$root"/usr/share/doc-base/* "$root"/usr/share/lintian/*
    find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
    find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
    mkdir -p "$(dirname "$BASE_TAR")"
    tar --numeric-owner -C "$root" -cf "$BASE_TAR.tmp" .
    mv -f "$BASE_TAR.tmp" "$BASE_TAR"
    rm -rf "$root"
}

if "$DOCKER" image inspect "$BASE_TAG" >/dev/null 2>&1; then
    log "base image $BASE_TAG present"
else
    [ -s "$BASE_TAR" ] || make_rootfs_tar
    log "importing $BASE_TAR as $BASE_TAG"
    "$DOCKER" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        "$BASE_TAR" "$BASE_TAG" >/dev/null
fi

echo "export DOCKER_HOST=$DOCKER_HOST" >"$RUN/docker.env"
echo "export DOCKER_HOST=$DOCKER_HOST"
