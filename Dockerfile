# One image for every runstream service:
#   docker run IMAGE serve executor        (ingest | executor | store | slurm-gateway | web)
#   docker run IMAGE db upgrade            (schema migrations, run once per release)
#   docker run IMAGE health --heartbeat-file /tmp/heartbeat --max-age 30
#
# The virtual environment is built from uv.lock (--frozen: the lock is never
# re-resolved), without the dev group, with every workspace member installed as
# a regular (non-editable) package, so the runtime stage needs no source tree.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------- build stage
FROM ${PYTHON_IMAGE} AS build

ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir "uv==${UV_VERSION}"

ENV UV_PROJECT_ENVIRONMENT=/app/.venv \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_NO_CACHE=1

WORKDIR /src

# 1) Third-party dependencies only (numpy, h5py, xarray, extra-data, ...): this
#    layer is rebuilt only when the lock or a member's pyproject.toml changes.
COPY pyproject.toml uv.lock README.md ./
COPY libs/common/pyproject.toml libs/common/pyproject.toml
COPY services/ingest/pyproject.toml services/ingest/pyproject.toml
COPY services/executor/pyproject.toml services/executor/pyproject.toml
COPY services/store/pyproject.toml services/store/pyproject.toml
COPY services/slurm-gateway/pyproject.toml services/slurm-gateway/pyproject.toml
COPY services/web/pyproject.toml services/web/pyproject.toml
RUN uv sync --frozen --no-dev --all-packages --no-install-workspace

# 2) The workspace itself (runstream CLI, common library, the four services).
COPY src src
COPY libs libs
COPY services services
RUN uv sync --frozen --no-dev --all-packages --no-editable \
    && /app/.venv/bin/runstream --help > /dev/null

# -------------------------------------------------------------- runtime stage
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="runstream" \
      org.opencontainers.image.description="Kafka-native per-run processing: ingest, executor, store, slurm-gateway, web"

# chromium: kaleido renders plotly figures' PNG thumbnails with it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends chromium \
    && rm -rf /var/lib/apt/lists/*

ARG UID=10001
RUN groupadd --system --gid "${UID}" runstream \
    && useradd --system --uid "${UID}" --gid runstream --home-dir /home/runstream \
       --create-home --shell /usr/sbin/nologin runstream \
    && mkdir -p /data \
    && chown runstream:runstream /data

COPY --from=build /app/.venv /app/.venv

ENV PATH=/app/.venv/bin:${PATH} \
    VIRTUAL_ENV=/app/.venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLBACKEND=Agg \
    MPLCONFIGDIR=/tmp/matplotlib \
    HOME=/home/runstream

WORKDIR /home/runstream
USER runstream

ENTRYPOINT ["runstream"]
CMD ["--help"]
