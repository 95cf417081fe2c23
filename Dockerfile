# One image for every process type: the Procfile's web, worker, beat and flower.
#   docker build -t oppsync .
#   docker run --env-file .env -p 8000:8000 oppsync                     # web
#   docker run --env-file .env oppsync honcho start --no-prefix worker  # worker (beat, flower)
# docker-compose.yml runs them all with Redis; docs/deploy.md has the checklist.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=8000

WORKDIR /app

# The deploy lock first (its layer is reused while only the code changes): every package
# pinned and checked against its hashes (requirements.txt, written by python3 dev.py lock).
COPY requirements.txt requirements-build.txt ./
RUN pip install --require-hashes --no-deps -r requirements.txt -r requirements-build.txt

# Then the project itself, without resolving or fetching anything again: built with the
# setuptools pinned above (no build isolation), so every package in the image was checked
# against its hash. (The simulators that `oppsync run --sandbox` and `oppsync demo` start
# are product code, in worker/sandbox/.)
COPY pyproject.toml README.md LICENSE Procfile mapping.example.toml ./
COPY schemas ./schemas
COPY web ./web
COPY worker ./worker
RUN pip install --no-deps --no-build-isolation --no-index . \
    && useradd --create-home --uid 10001 oppsync

# Not root: the processes write only the beat schedule and Flower's database, under /tmp.
USER oppsync

EXPOSE 8000 5555
# Each container runs one Procfile process: web by default; the others override the command.
CMD ["honcho", "start", "--no-prefix", "--no-colour", "web"]
