# syntax=docker/dockerfile:1
# The Agent API image: one `agent-api run` (Granian) per container. Used by compose.yml for the API replicas
# and the one-shot `migrate` service.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    PATH="/app/.venv/bin:${PATH}"

RUN pip install --no-cache-dir uv

WORKDIR /app

# Dependencies first (cached until pyproject.toml / uv.lock change), then the project itself.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY alembic.ini ./
COPY migrations ./migrations
COPY app ./app
RUN uv sync --frozen --no-dev

RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin agent \
    && mkdir -p /app/.data \
    && chown agent /app/.data
USER agent

ENV LITESTAR_HOST=0.0.0.0 \
    LITESTAR_PORT=8000
EXPOSE 8000

CMD ["agent-api", "run", "--host", "0.0.0.0", "--port", "8000", "--wc", "2"]
