#!/usr/bin/env bash
# Keystone (tools/keystone-requirements.txt), from PyPI, in its own venv
# .venv-keystone for the tests that start a real Keystone
# (tests/integration/keystone.py): its pins are not Tether's.
# Idempotent and cached: reinstalls only when the requirements change.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-keystone
req=tools/keystone-requirements.txt
exec 9>".venv-keystone.lock"
flock 9
if [ -x "$venv/bin/keystone-manage" ] && cmp -s "$req" "$venv/.requirements"; then
  exit 0
fi
started=$(date +%s)
rm -rf "$venv"
"${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/pip" install -q -r "$req"
"$venv/bin/python" -W ignore -c "import keystone.server.wsgi"
cp "$req" "$venv/.requirements"
echo "keystone-venv: Keystone installed in $venv in $(( $(date +%s) - started )) s"
