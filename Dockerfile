# syntax=docker/dockerfile:1
# Meshgate gateway image: `meshgate serve` as a non-root user on a slim Python base.
#
#   docker build -t meshgate:0.1.0 .
#   docker run --rm -v $PWD/mesh.yaml:/etc/meshgate/mesh.yaml:ro -p 7400:7400 \
#     meshgate:0.1.0 -c /etc/meshgate/mesh.yaml --region us-west --listen 0.0.0.0:7400
#
# The root filesystem can be read-only: the gateway writes only under /tmp and the data dir
# (/var/lib/meshgate, an `embedded` region's JetStream). Health is plain HTTP on the region's
# `metrics:` address: /readyz (serving, broker connected) and /healthz (alive), which work with
# TLS on (the gRPC port then wants a client certificate of the mesh CA). In Kubernetes the Helm
# chart (helm/meshgate) probes them with httpGet probes; the HEALTHCHECK below serves plain Docker.
#
# The base is pinned by digest (the multi-platform index of python:3.12.14-slim-bookworm), so a
# rebuild gets the same Python and Debian. To move it: docker buildx imagetools inspect
# python:3.12-slim-bookworm, put the new digest here, and rebuild.
ARG PYTHON_IMAGE=python:3.12.14-slim-bookworm@sha256:782412e85d0f0984994c290652577d4018aff08145c85b262bb63dc0c7522254

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/meshgate
WORKDIR /src
# The dependencies first, in a layer of their own: a change of the sources reuses it. Every
# one is pinned in requirements.lock with the hashes of its files (python scripts/lock_image.py
# writes it), and pip refuses any file whose hash is not there; wheels only, nothing compiled.
# The lock holds the build-system's setuptools too: meshgate is built below without build
# isolation, so nothing unpinned is fetched.
COPY requirements.lock ./
RUN /opt/meshgate/bin/pip install --require-hashes --no-deps --only-binary :all: -r requirements.lock
# Only what the package needs (see .dockerignore): the project metadata, `meshgate/` and the
# folders pyproject.toml maps into it ([tool.setuptools.package-dir]; bench/ too, so that
# `meshgate bench` runs in the image as it does from the wheel).
COPY pyproject.toml README.md ./
COPY meshgate/ meshgate/
COPY bench/ bench/
COPY brokers/ brokers/
COPY config/ config/
COPY gateway/ gateway/
COPY observability/ observability/
COPY proto/ proto/
COPY replicator/ replicator/
COPY router/ router/
COPY tls/ tls/
# --no-deps: the dependencies are the locked ones above; pip check fails the build if the lock
# misses one. The build tools are removed after: the image runs meshgate, it builds nothing.
RUN /opt/meshgate/bin/pip install --no-deps --no-build-isolation --no-index --no-compile . \
 && /opt/meshgate/bin/pip check \
 && /opt/meshgate/bin/pip uninstall -q -y setuptools wheel \
 && /opt/meshgate/bin/python -m compileall -q /opt/meshgate/lib \
 && /opt/meshgate/bin/meshgate --help > /dev/null

FROM ${PYTHON_IMAGE}
ARG MESHGATE_UID=10001
LABEL org.opencontainers.image.title="meshgate" \
      org.opencontainers.image.description="Multi-region event mesh gateway" \
      org.opencontainers.image.source="https://github.com/meshgate/meshgate" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid ${MESHGATE_UID} meshgate \
 && useradd --system --uid ${MESHGATE_UID} --gid meshgate --home-dir /var/lib/meshgate \
      --no-create-home --shell /usr/sbin/nologin meshgate \
 && mkdir -p /etc/meshgate /var/lib/meshgate \
 && chown meshgate:meshgate /var/lib/meshgate
COPY --from=build /opt/meshgate /opt/meshgate
ENV PATH=/opt/meshgate/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MESHGATE_HEALTHCHECK_URL=http://127.0.0.1:9464/readyz
WORKDIR /var/lib/meshgate
USER 10001:10001
# 7400: gRPC (Gateway, Replication, Admin, Health, reflection); 9464: Prometheus metrics
# (where the mesh file's `metrics:` says).
EXPOSE 7400 9464
# Docker only: GET /readyz must answer 200. The region's `metrics:` must be 0.0.0.0:9464 or
# 127.0.0.1:9464, else set MESHGATE_HEALTHCHECK_URL (docker run -e) to its address. urllib, not
# grpc: a plain HTTP GET needs no certificate and imports in a fraction of the time.
# Kubernetes ignores HEALTHCHECK and uses the chart's httpGet probes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['MESHGATE_HEALTHCHECK_URL'], timeout=3)"]
ENTRYPOINT ["meshgate", "serve"]
CMD ["--help"]
