# insight-scheduler: the daemon. Mount your config at /config/config.yaml
# (or set INSIGHT_SCHEDULER__... variables) and keep the SQLite file on a volume.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    INSIGHT_SCHEDULER_CONFIG=/config/config.yaml

WORKDIR /src
COPY pyproject.toml README.md ./
COPY scheduler ./scheduler
COPY migrations ./migrations
# The same install step as scripts/_venv.sh (which CI runs): pip install .
RUN python -m pip install --upgrade pip && python -m pip install . && rm -rf /src

RUN useradd --create-home --uid 10001 insight && mkdir -p /config /data && chown insight /data
COPY config.yaml /config/config.yaml
USER insight
WORKDIR /data
VOLUME ["/data"]

# Ready = the database answers and this container's daemon ticked recently.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s CMD ["insight-scheduler", "check"]

ENTRYPOINT ["insight-scheduler"]
CMD ["run"]
