# Retouch — self-hosted Discord image-editing bot.
# The base is pinned by digest (the multi-arch index of python:3.11.10-slim-bookworm), so a rebuild
# gets exactly the image that was tested, not whatever the tag points to that day. To update, let
# Renovate/Dependabot bump it, or take the new digest from
# `docker buildx imagetools inspect python:3.11-slim-bookworm` and change tag and digest together.
FROM python:3.11.10-slim-bookworm@sha256:840e180ebcc6e5c8efab209c43f5e40fd2af98cb49db5c7103c90539c56bb30e

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATA_DIR=/data

WORKDIR /app

# Dependencies first, in their own layer: editing the source does not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir -p bot cogs && touch bot/__init__.py cogs/__init__.py \
    && pip install . \
    && pip uninstall -y retouch

COPY bot ./bot
COPY cogs ./cogs

RUN useradd --create-home --uid 10001 retouch \
    && mkdir -p /data && chown retouch:retouch /data
USER retouch
VOLUME ["/data"]

# Healthy only while the gateway is connected, the database takes writes and a model can edit: asks
# http://127.0.0.1:$METRICS_PORT/healthz (falls back to the heartbeat file when METRICS_PORT=0).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "bot.observability.healthcheck"]

# Exec form: python runs as PID 1 and gets SIGTERM directly, so in-flight edits drain gracefully.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "bot"]
