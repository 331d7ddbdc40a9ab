#!/usr/bin/env bash
# Every check Tether has: lint, types, and the whole test suite (unit tests
# with fakes, integration tests against real tgtd / libvirtd / RabbitMQ /
# PostgreSQL / MariaDB that the tests start or reach themselves).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONDONTWRITEBYTECODE=1
echo "== ruff";  .venv/bin/ruff check tether tests bench tools
echo "== mypy";  .venv/bin/mypy
echo "== pytest"
.venv/bin/python -m pytest -p no:cacheprovider -q -ra "$@"
