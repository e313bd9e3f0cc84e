#!/usr/bin/env bash
# The project's test command (README): makes .venv, installs cqrs_celery with its test extra, runs pytest.
# Broker tests need PostgreSQL, RabbitMQ and Redis on 127.0.0.1; without them they are skipped,
# unless CQRS_REQUIRE_SERVICES=1 (CI), which makes them fail instead.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
exec .venv/bin/python -m pytest "$@"
