# syntax=docker/dockerfile:1.7
# The mlops-operator image: the locked runtime dependencies and the operator in a virtualenv on a
# slim Python, run as a non-root user (UID 65532) on a read-only root filesystem. From the repo root:
#   docker build -t mlops-operator:$(python -c 'import tomllib;print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])') .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# uv at the Makefile's version, from its official image.
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

FROM ${PYTHON_IMAGE} AS deps
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/mlops-operator
WORKDIR /src
# The dependencies first: this stage changes only with the lock file (not with the README, which
# only the project's own metadata needs).
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-default-groups --no-install-project

FROM deps AS build
# Then the operator itself, installed (not editable) with the compiled pipeline inside the package;
# its files alone are set aside in /project for the last layer of the image.
COPY README.md ./
COPY operator/ operator/
COPY pipelines/tabular.yaml pipelines/tabular.yaml
# --reinstall-package: uv's cache keys a local project's built wheel on pyproject.toml, not on its
# sources, so without it a code change would install the wheel cached from an earlier build.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-default-groups --no-editable --reinstall-package mlops-operator \
 && mkdir /project && cd /opt/mlops-operator \
 && cp -a --parents lib/python3*/site-packages/mlops_operator lib/python3*/site-packages/mlops_operator-*.dist-info \
      bin/mlops-operator bin/kubectl-mlops /project/

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="mlops-operator" \
      org.opencontainers.image.description="Kubernetes operator for ModelTraining, ModelDeployment and DriftMonitor" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 65532 mlops \
 && useradd --system --uid 65532 --gid 65532 --home-dir /var/lib/mlops-operator --no-create-home \
      --shell /usr/sbin/nologin mlops
# Same base image and path as the build stages, so the virtualenv's interpreter links stay valid.
# Two layers: the dependencies (about 750 MB, unchanged until the lock file changes, so a node that
# has them pulls and unpacks only the second), then the operator's own files.
COPY --from=deps /opt/mlops-operator /opt/mlops-operator
COPY --from=build /project/ /opt/mlops-operator/
ENV PATH=/opt/mlops-operator/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    MLOPS_DATA_DIR=/var/lib/mlops-operator \
    MLOPS_METRICS_HOST=0.0.0.0
# Numeric, so Kubernetes can check runAsNonRoot without reading /etc/passwd.
USER 65532:65532
# metrics, liveness (/healthz), Seldon request-logger sink
EXPOSE 8080 8081 9180
ENTRYPOINT ["mlops-operator"]
