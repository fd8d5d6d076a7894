# One image for every K2 service: the API, the ingester, and the Dagster webserver and daemon (docker-compose.yml
# picks the role with the command). Configuration comes only from K2_* environment variables, as everywhere.
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    K2_HOME=/var/lib/k2

RUN python -m venv /opt/venv && pip install pip==25.3

WORKDIR /app

# Dependencies first (pinned in pyproject.toml, dagster-postgres among them), so code changes do not reinstall them.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The code, installed in place: K2 finds config/, schemas/ and workspace.yaml next to its packages.
COPY config ./config
COPY schemas ./schemas
COPY workspace.yaml ./
COPY k2_core ./k2_core
COPY k2_stream ./k2_stream
COPY k2_api ./k2_api
COPY k2_cli ./k2_cli
COPY k2_dagster ./k2_dagster
# $K2_HOME/dagster is DAGSTER_HOME (k2_dagster.launcher); compose mounts the dagster-storage volume there, and a new
# volume takes the ownership of the image's directory.
RUN pip install --no-deps -e . \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/k2 --shell /usr/sbin/nologin k2 \
    && mkdir -p /var/lib/k2/dagster \
    && chown -R k2:k2 /var/lib/k2

USER k2

EXPOSE 8000 9108 3000

CMD ["k2", "api"]
