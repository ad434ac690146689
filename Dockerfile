# The one image every taskexec process runs from: api, worker, sweeper, flower and migrate
# (docker-compose.yml picks the command; see docs/operations.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, from setup.cfg alone, so a code change does not reinstall them.
COPY setup.cfg pyproject.toml README.md ./
RUN python -c "import configparser; c = configparser.ConfigParser(); c.read('setup.cfg'); \
open('/tmp/requirements.txt', 'w').write(c['options']['install_requires'])" \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

COPY config ./config
COPY shared ./shared
COPY api ./api
COPY workers ./workers
COPY cli ./cli
RUN pip install --no-deps . \
 && useradd --create-home --uid 10001 taskexec

# Never root: a task handler runs in a worker child process, and Celery warns against root.
USER taskexec

# 8000: the API (gunicorn); 5555: Flower; 9100: worker metrics (TASKEXEC_METRICS_PORT).
EXPOSE 8000 5555 9100

CMD ["gunicorn", "-c", "config/gunicorn.py", "api.wsgi:app"]
