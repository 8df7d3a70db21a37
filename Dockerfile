# sshipit: Drone / Woodpecker / GitHub Actions plugin image.
#
#   docker build -t sshipit .
#
# Settings come from PLUGIN_* (Drone, Woodpecker) or INPUT_* (GitHub Actions) variables; the
# workspace is the working directory (/drone/src for Drone). Runs as uid 1000, not root.
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


FROM python:3.11-slim

RUN useradd --uid 1000 --user-group --no-log-init --create-home --skel /dev/null \
        --shell /usr/sbin/nologin sshipit

COPY --from=build /opt/sshipit /opt/sshipit

ENV PATH=/opt/sshipit/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/sshipit

USER 1000:1000
WORKDIR /drone/src
ENTRYPOINT ["sshipit"]
