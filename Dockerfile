# Minimal image for now; the production multi-stage image comes with the serving work.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends gcc g++ \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY recommender ./recommender
COPY training ./training
COPY serving ./serving
RUN pip install --no-cache-dir .
ENTRYPOINT ["recommender"]
CMD ["--help"]
