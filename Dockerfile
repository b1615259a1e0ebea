# syntax=docker/dockerfile:1
# The next-best-offer API. Two stages: the builder has gcc and compiles every wheel
# (rectools-lightfm, a maintained build of LightFM, has C extensions); the runtime stage
# is slim, has no compiler, and runs as an unprivileged user.
#
#   docker build -t nbo-api .
#   docker run -p 8000:8000 -v $PWD/demo/bank:/data/bank:ro -v $PWD/demo/api_keys.json:/config/api_keys.json:ro \
#     -e RECOMMENDER_TRACKING_URI=http://mlflow:5000 \
#     -e RECOMMENDER_EVENTS_URL=postgresql+psycopg://nbo@db/nbo nbo-api

# Pin the base image by digest where the registry can be reached, so a rebuild cannot pick
# up a different image under the same tag:
#   docker buildx imagetools inspect python:3.11-slim   # prints "Digest: sha256:..."
#   docker build --build-arg BASE=python:3.11-slim@sha256:<digest> -t nbo-api .
ARG BASE=python:3.11-slim

FROM ${BASE} AS builder
# Portable build: LightFM's setup.py adds `-march=native -ffast-math` unless this is set.
# -march=native would tie the image to the build machine's CPU (an older host dies with an
# illegal instruction). The same variable drops -ffast-math too: LightFM's SGD then follows
# IEEE floating point (no reassociation of sums, NaN/inf handled as written), so a trained
# model's embeddings and scores can differ in the last bits from a -ffast-math build of the
# same data and seed, and training can be a little slower; they no longer depend on the
# build machine's CPU. Multi-threaded (Hogwild) training is not bit-reproducible either way.
# The difference in ranking metrics was not measured here.
ENV LIGHTFM_NO_CFLAGS=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc g++ \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY requirements ./requirements
# Every dependency from the hashed lock (--require-hashes), build tools included, so
# nothing unreviewed is fetched at build time; sdists are compiled here into wheels.
RUN pip install --no-cache-dir --require-hashes -r requirements/build.lock \
    && pip wheel --no-cache-dir --require-hashes --no-build-isolation --wheel-dir /wheels \
       -r requirements/runtime.lock
COPY pyproject.toml README.md ./
COPY recommender ./recommender
COPY training ./training
COPY serving ./serving
RUN pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels .

FROM ${BASE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    RECOMMENDER_DATA_DIR=/data/bank \
    RECOMMENDER_API_KEYS_FILE=/config/api_keys.json \
    RECOMMENDER_EVENTS_URL=sqlite:////var/lib/nbo/events.db \
    RECOMMENDER_LOCAL_MODEL_DIR=/var/lib/nbo/models \
    RECOMMENDER_SPILL_DIR=/var/lib/nbo/spill \
    MLFLOW_TRACKING_URI=sqlite:////var/lib/nbo/mlflow.db \
    PORT=8000 \
    WORKERS=2
# libgomp1: GCC's OpenMP runtime. LightFM's extension is built with OpenMP and cannot be
# imported without libgomp.so.1 (the slim base lacks it), so without it the image can
# neither train nor load a model. It is the only package added to the runtime stage.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --no-deps /wheels/*.whl \
    && useradd --system --uid 10001 --home-dir /var/lib/nbo --create-home nbo \
    && mkdir -p /data /config \
    && chown nbo /var/lib/nbo
USER nbo
WORKDIR /var/lib/nbo
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\", \"8000\")}/healthz', timeout=2)"]
# Every setting comes from RECOMMENDER_* variables (see the README); the shell form lets
# PORT and WORKERS be overridden at `docker run`.
CMD ["sh", "-c", "exec recommender serve --host 0.0.0.0 --port \"$PORT\" --workers \"$WORKERS\""]
