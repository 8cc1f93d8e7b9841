# syntax=docker/dockerfile:1
# Concordia and the pinned claude CLI. The repository Claude works in is mounted at /work,
# the bot's state (database, tokens, stored API key) lives in /state, and Claude's own files
# (~/.claude: the conversations `--resume` needs) in /home/concordia. Run it with
# compose.yaml; the README's "Run it as a service" says how and why.
#
#   docker build -t concordia --build-arg UID="$(id -u)" --build-arg GID="$(id -g)" .
#
# UID/GID: the owner of the repository's files on the host, so that Claude can edit them
# and git does not call the mounted repository "dubiously owned".
# For builds that never change under you, pin the two bases by digest (tag@sha256:...).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG NODE_IMAGE=node:22-bookworm-slim

# -- The claude CLI. npm installs the pinned package; its postinstall copies the native
#    binary for this platform over bin/claude.exe, so Node is needed only here.
FROM ${NODE_IMAGE} AS claude
# The Makefile's CLAUDE_VERSION; tests/test_deploy_files.py keeps the two equal.
ARG CLAUDE_VERSION=2.1.331
RUN npm install --prefix /opt/claude --no-audit --no-fund --loglevel=error \
        "@anthropic-ai/claude-code@${CLAUDE_VERSION}" \
    && /opt/claude/node_modules/.bin/claude --version

# -- Concordia: a virtualenv with the wheel built from these sources and its dependencies.
FROM ${PYTHON_IMAGE} AS app
# Optional extras, e.g. --build-arg EXTRAS=share for `concordia run --share` with ngrok.
ARG EXTRAS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md /src/
COPY bot /src/bot
COPY adapters /src/adapters
COPY agents /src/agents
COPY migrations /src/migrations
RUN python -m venv /opt/concordia \
    && /opt/concordia/bin/pip install "/src${EXTRAS:+[${EXTRAS}]}"

# -- The image.
FROM ${PYTHON_IMAGE}
# git: Claude works with the repository's history. bubblewrap and socat: Claude Code's
# sandbox for the commands Claude runs (Docker's default seccomp profile forbids the
# namespaces it needs; Concordia then says so at start and denies its files by permission
# rules instead). tini: PID 1, which passes SIGTERM on and reaps what Claude's commands
# leave behind. Not pinned to Debian versions (DL3008): the archive drops a version once
# its security update is out, and the build would break; pin the base image instead.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git bubblewrap socat tini \
    && rm -rf /var/lib/apt/lists/*

ARG UID=1000
ARG GID=1000
RUN groupadd --gid "${GID}" concordia \
    && useradd --uid "${UID}" --gid concordia --create-home --shell /bin/bash concordia \
    && install -d -o concordia -g concordia -m 0700 /state \
    && install -d -o concordia -g concordia -m 0755 /work

COPY --from=claude /opt/claude/node_modules/@anthropic-ai/claude-code/bin/claude.exe /usr/local/bin/claude
COPY --from=app /opt/concordia /opt/concordia
COPY contrib/container.toml /etc/concordia/config.toml
# Only the command goes on PATH: the `python` Claude's commands find stays the system one,
# not the bot's virtualenv.
RUN ln -s /opt/concordia/bin/concordia /usr/local/bin/concordia

ENV CONCORDIA_CONFIG=/etc/concordia/config.toml \
    PYTHONUNBUFFERED=1

# Numeric, so that runAsNonRoot-style checks can tell it is not root.
USER ${UID}:${GID}
WORKDIR /work
VOLUME ["/work", "/state", "/home/concordia"]
# 8765: the page, WebSocket v1 and /healthz. 9464: /metrics, /healthz and /readyz, when
# CONCORDIA_METRICS_ENABLED=true.
EXPOSE 8765 9464
# The web transport's liveness; a changed websocket.port needs its own healthcheck (compose).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8765/healthz', timeout=4)"]

ENTRYPOINT ["/usr/bin/tini", "--", "concordia"]
CMD ["run"]
