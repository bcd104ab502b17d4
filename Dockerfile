FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations
RUN pip install --no-cache-dir .
# The image's entry point is the tiergate CLI: serve, worker, migrate, keys, mock-upstream.
ENTRYPOINT ["tiergate"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080", "--no-worker"]
