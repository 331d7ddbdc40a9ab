#!/usr/bin/env bash
# Install everything Tether needs on a fresh Debian 12 machine, as root:
# Debian packages (libvirt + QEMU, tgt, libiscsi tools, open-iscsi for the
# host-login connector), the venv in .venv, the package itself (editable,
# with the dev tools) and the OpenStack clients the tests run, in
# .venv-clients.  Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(tgt libiscsi-bin open-iscsi libvirt-daemon-system libvirt-daemon-driver-qemu
          qemu-system-x86 qemu-block-extra qemu-utils libvirt-dev pkg-config gcc python3-venv
          rabbitmq-server)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "bootstrap: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# /dev/kvm: what udev does on a normal install (QEMU runs as libvirt-qemu, in group kvm);
# containers often leave it root-only.  Tether falls back to plain emulation without it.
if [ -c /dev/kvm ] && getent group kvm >/dev/null; then
  chgrp kvm /dev/kvm && chmod 0660 /dev/kvm || true
fi

PY=${PYTHON:-python3}
"$PY" - <<'PYCHECK'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"bootstrap: Python >= 3.11 needed, found {sys.version.split()[0]}")
PYCHECK
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.tether-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  touch "$stamp"
fi
# the real OpenStack clients the compatibility tests run, in their own venv
tools/client-venv.sh
tools/keystone-venv.sh  # Keystone for the keystone-mode tests, in .venv-keystone
echo "bootstrap: ready ($(.venv/bin/python --version), $(.venv/bin/tether --help >/dev/null && echo tether ok))"
