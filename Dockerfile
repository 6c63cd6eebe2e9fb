# The intentstream image (worker, CLI, trainer). Used by docker-compose.yml.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY intentstream ./intentstream
COPY stream ./stream
COPY features ./features
COPY feature_repo ./feature_repo
COPY reasoning ./reasoning
COPY training ./training
COPY infra ./infra
COPY benchmarks ./benchmarks
RUN pip install --no-cache-dir .
ENV INTENTSTREAM_DATA_DIR=/data \
    INTENTSTREAM_FEAST__REPO_PATH=/app/feature_repo
CMD ["intentstream", "worker"]
