# syntax=docker/dockerfile:1
# knowctl gateway image: a builder stage makes a virtualenv with knowctl installed from
# this source tree; the runtime stage copies only that virtualenv onto a slim Python.
ARG PYTHON_IMAGE=python:3.13-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/knowctl
# Metadata first: an edit to the code does not invalidate a layer it does not touch.
COPY pyproject.toml README.md ./
COPY knowctl ./knowctl
COPY templates ./templates
RUN /opt/knowctl/bin/pip install --no-cache-dir ".[deploy]"

FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="knowctl" \
      org.opencontainers.image.description="Quota-and-cache gateway for Google's Gemini models" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# In a container the daemon must listen on every interface; everything else comes from
# KNOWCTL_* variables, the config file (KNOWCTL_CONFIG) and secret files (KNOWCTL_*_FILE).
ENV PATH=/opt/knowctl/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    KNOWCTL_HOST=0.0.0.0
RUN groupadd --gid 1000 knowctl \
    && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin knowctl
COPY --from=builder /opt/knowctl /opt/knowctl
USER 1000:1000
WORKDIR /tmp
EXPOSE 8080
# No curl in the slim image: the standard library probes the health route.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('KNOWCTL_PORT', '8080') + '/api/health', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["knowctl", "serve"]
