# syntax=docker/dockerfile:1
#
# egressgate container image: small, non-root, read-only-root-filesystem friendly.
#
#   docker build -t egressgate:0.1.0 .
#   docker run --rm -p 3128:3128 -p 9090:9090 \
#       -v "$PWD/egress.yaml:/etc/egressgate/egress.yaml:ro" --read-only --tmpfs /tmp \
#       egressgate:0.1.0
#
# Config: /etc/egressgate/egress.yaml. The image ships the built-in default there (listen
# 0.0.0.0:3128, admin 0.0.0.0:9090, allows NOTHING), so the same command works with and without
# your file: mount yours over it (a file, or on Kubernetes the ConfigMap as the whole
# /etc/egressgate directory, which `egressgate k8s render` does). Any other arguments replace
# CMD: `docker run egressgate:0.1.0 check --config /etc/egressgate/egress.yaml`.
#
# Writes: none outside /tmp (bytecode is compiled at build time, PYTHONDONTWRITEBYTECODE stops
# any later attempt, logs go to stdout). Runs as uid/gid 65532, the id the Kubernetes manifests
# pin with runAsUser. See docs/kubernetes.md.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: a wheel of this tree, installed with its dependencies into a self-contained venv
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what the wheel needs (.dockerignore is an allowlist of the same files).
COPY pyproject.toml README.md ./
COPY egressgate ./egressgate
# pip compiles the bytecode here, so nothing needs writing at run time. pip and setuptools are
# then removed: not needed to run, half the venv's size, less to patch.
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/egressgate \
 && /opt/egressgate/bin/pip install /wheels/egressgate-*.whl \
 && /opt/egressgate/bin/python -m pip uninstall --yes pip setuptools
# The built-in default as a file, validated by the freshly installed command itself.
RUN mkdir -p /out/etc/egressgate \
 && /opt/egressgate/bin/egressgate run --print-default-config > /out/etc/egressgate/egress.yaml \
 && /opt/egressgate/bin/egressgate check --config /out/etc/egressgate/egress.yaml

# ---- runtime: the same base (the venv's python symlinks point into it), plus the venv
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="egressgate" \
      org.opencontainers.image.description="Egress firewall: a hostname-allowlist HTTP forward proxy" \
      org.opencontainers.image.licenses="Apache-2.0"
# A passwd entry for the id, so libraries that look the user up do not fail.
RUN groupadd --system --gid 65532 egressgate \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin egressgate
# nftables: the sidecar's init container (`egressgate k8s render --mode transparent`) runs
# `nft -f redirect.nft` in this same image unless --init-image names another one; without nft
# the init container, and so the pod, would never start. (The proxy itself never runs it.)
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/egressgate /opt/egressgate
COPY --from=build /out/etc/egressgate/egress.yaml /etc/egressgate/egress.yaml
ENV PATH=/opt/egressgate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
WORKDIR /tmp
# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 65532:65532
# 3128: the proxy. 9090: admin (GET /healthz, /readyz, /metrics).
EXPOSE 3128 9090
# Docker and most container services use this; Kubernetes ignores it and uses its probes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["egressgate", "check", "--live", "--config", "/etc/egressgate/egress.yaml"]
# SIGTERM (docker stop, Kubernetes) fails /readyz, then drains for limits.drain_timeout_s
# (default 25 s): give `docker stop --time 35`; the Kubernetes manifests set the grace period.
STOPSIGNAL SIGTERM
ENTRYPOINT ["egressgate"]
CMD ["run", "--config", "/etc/egressgate/egress.yaml"]
