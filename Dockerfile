# sso-sidecar container image: a non-root Python image with the sidecar in a virtualenv and nothing else.
#   docker build -t sso-sidecar .          (or: podman build --format docker -t sso-sidecar .)
#   docker run --read-only -v $PWD/config.yaml:/etc/sso-sidecar/config.yaml:ro -p 4180:4180 sso-sidecar
# BASE is any Debian-based image with Python 3.11 and its venv module: the official python image by default;
# CI passes a stand-in built from Debian packages (scripts/image.sh), since it cannot pull images.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# binutils only for `strip` in this stage: the wheels' extension modules carry debug symbols (about 26 MB).
# Not pinned: the stage is thrown away, and a pinned Debian version breaks with every point release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install --yes --no-install-recommends binutils \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
# The runtime part of the lock (requirements/image.txt: the same versions and hashes as the venv that ran the
# tests), every file hash-checked; only wheels (every dependency has one for CPython 3.11 on glibc), so no compiler
# is needed. Its own layer, so an edit of the code alone does not install the dependencies again.
COPY requirements/image.txt ./requirements/
RUN /opt/venv/bin/pip install --no-compile --require-hashes --only-binary=:all: -r requirements/image.txt
COPY pyproject.toml README.md LICENSE ./
COPY proxy ./proxy
# The sidecar itself, with the locked setuptools (no build isolation, which would fetch an unpinned one) and no
# dependency resolution (everything came from the lock). pip and setuptools leave the venv once it is built;
# bytecode is compiled here because the root filesystem is read-only at run time ("unchecked-hash": the image
# never changes, so sources are not re-checked).
RUN /opt/venv/bin/pip install --no-compile --no-deps --no-build-isolation --no-index . \
 && /opt/venv/bin/pip uninstall --yes pip setuptools \
 && find /opt/venv -name '*.so' -exec strip --strip-unneeded {} + \
 && /opt/venv/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/venv/lib

FROM ${BASE}
LABEL org.opencontainers.image.title="sso-sidecar" \
      org.opencontainers.image.description="OpenID Connect single sign-on in front of a web console" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /opt/venv /opt/venv
RUN groupadd --gid 10001 sidecar \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin sidecar
USER 10001:10001
EXPOSE 4180
# SIGTERM drains in-flight requests (up to 30 s) before exiting; give the pod a longer grace period.
STOPSIGNAL SIGTERM
# For docker and podman (Kubernetes has its own probes). Exec form: no shell needed. With a listen address
# other than :4180, set HEALTHCHECK_URL in the container's environment.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
  CMD ["python3", "-c", "import os, urllib.request as r; r.urlopen(os.environ.get('HEALTHCHECK_URL', 'http://127.0.0.1:4180/healthz'), timeout=2)"]
ENTRYPOINT ["sso-sidecar"]
CMD ["run", "--config", "/etc/sso-sidecar/config.yaml"]
