# sshipit: Drone / Woodpecker / GitHub Actions plugin image. One build, two final targets that share
# every layer and differ only in who runs the entry point (README.md, "The plugin image", says why):
#
#   docker build -t sshipit .                                # target `plugin` (the default, last stage):
#                                                            # Drone / Woodpecker, uid 1000, WORKDIR /drone/src
#   docker build --target github -t sshipit:github .         # GitHub Actions (action.yml): root, no WORKDIR
#
# Settings come from PLUGIN_* (Drone, Woodpecker) or INPUT_* (GitHub Actions) variables; the
# workspace is the working directory (the runner's --workdir / -w).
#
# Packages come from PyPI by default. To build against a mirror or a local wheelhouse, pass pip's own
# settings as build args, e.g. --build-arg PIP_INDEX_URL=https://mirror/simple, or
#   --network=host --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=http://127.0.0.1:8000/
# (scripts/build-image.sh does the latter on machines without a container registry). Build args are
# used only in the build stage and are not part of the final image.

FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/sshipit

# pyproject.toml, README.md and src/ only (see .dockerignore).
COPY . /build/
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
ARG PIP_TRUSTED_HOST
RUN /opt/sshipit/bin/pip install /build \
 && /opt/sshipit/bin/sshipit --help >/dev/null \
 && /opt/sshipit/bin/pip uninstall --yes pip setuptools wheel


# What both targets run: the venv, no compiler, no pip, no build tree; no USER and no WORKDIR yet.
FROM python:3.11-slim AS runtime

RUN useradd --uid 1000 --user-group --no-log-init --create-home --skel /dev/null \
        --shell /usr/sbin/nologin sshipit

COPY --from=build /opt/sshipit /opt/sshipit

ENV PATH=/opt/sshipit/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/sshipit
ENTRYPOINT ["sshipit"]


# GitHub Actions (sshipit/sshipit:<version>-github, what action.yml runs). GitHub's documented contract
# for container actions: run as the default user, root (the runner's files in /github belong to its own
# uid, 1001 on hosted runners, so no other fixed uid could append to GITHUB_OUTPUT), no USER, no
# WORKDIR (the runner passes --workdir /github/workspace). As root, sshipit only appends to the two
# files the runner created (GITHUB_OUTPUT, GITHUB_STEP_SUMMARY): it creates nothing in /github.
FROM runtime AS github
LABEL org.opencontainers.image.description="sshipit as a GitHub Actions container action (runs as root, as GitHub requires)"


# Drone / Woodpecker (sshipit/sshipit:<version>): unprivileged, and the default target, so that a
# plain `docker build .` gives the image that never runs as root.
FROM runtime AS plugin
LABEL org.opencontainers.image.description="sshipit as a Drone / Woodpecker plugin (runs as uid 1000)"
USER 1000:1000
WORKDIR /drone/src
