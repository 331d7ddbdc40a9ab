#!/usr/bin/env bash
# The real OpenStack clients (tools/clients-requirements.txt), from PyPI, in
# their own venv .venv-clients: none of their dependencies meets Tether's.
# Idempotent and cached: reinstalls only when the requirements change.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-clients
req=tools/clients-requirements.txt
exec 9>".venv-clients.lock"
flock 9
if [ -x "$venv/bin/openstack" ] && cmp -s "$req" "$venv/.requirements"; then
  exit 0
fi
started=$(date +%s)
rm -rf "$venv"
"${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/pip" install -q -r "$req"
"$venv/bin/openstack" --version >/dev/null
cp "$req" "$venv/.requirements"
echo "client-venv: OpenStack clients installed in $venv in $(( $(date +%s) - started )) s"
