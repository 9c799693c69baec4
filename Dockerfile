# syntax=docker/dockerfile:1.7
# The operator and task-runner image: `compozy operator` (the chart's Deployment, with api.Service
# and the web UI it serves) and `compozy task run` (task pods) from one wheel.
#   docker build -t ghcr.io/compozy/compozy-operator:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG NODE_IMAGE=node:20-bookworm-slim

# ---- ui: the web UI's static files (ui/, docs/ui.md), from the exact versions of its lock -------
FROM ${NODE_IMAGE} AS ui
WORKDIR /src/ui
COPY ui/package.json ui/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY ui/index.html ui/vite.config.ts ui/tsconfig.json ./
COPY ui/src ./src
# vite writes them where the package serves them from: /src/operator/compozy_operator/api_service/ui_dist
RUN npm test && npm run build

# ---- build: the project's wheel plus the wheels of its pinned dependencies ----------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml requirements.lock README.md ./
COPY operator ./operator
COPY --from=ui /src/operator/compozy_operator/api_service/ui_dist ./operator/compozy_operator/api_service/ui_dist
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels --constraint requirements.lock .

# ---- runtime: the wheels installed, nothing else --------------------------------------------------
FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="compozy-operator" \
      org.opencontainers.image.description="Kubernetes-native workflow engine for AI agents and tools: operator and task runner" \
      org.opencontainers.image.source="https://github.com/compozy/compozy-operator" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The wheels are bind-mounted from the build stage, so they never become a layer of this image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --no-index --find-links /wheels compozy-operator \
 && groupadd --gid 65532 compozy \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin compozy
# Numeric, so runAsNonRoot can verify it; matches the chart's runAsUser and the task pods'.
USER 65532:65532
WORKDIR /tmp
EXPOSE 8080
# `compozy operator` by default; task pods run `compozy task run` (args: [task, run]).
ENTRYPOINT ["compozy"]
CMD ["operator"]
