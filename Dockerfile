# Build a wheel from the sources, then install only that wheel: at runtime there is no checkout
# and no alembic.ini; `tiergate migrate` finds its scripts in the installed `tiergate_migrations`.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

FROM python:3.11-slim
COPY --from=build /dist /dist
RUN pip install --no-cache-dir /dist/*.whl && rm -rf /dist
WORKDIR /var/lib/tiergate
# The image's entry point is the tiergate CLI: serve, worker, migrate, keys, mock-upstream.
ENTRYPOINT ["tiergate"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080", "--no-worker"]
