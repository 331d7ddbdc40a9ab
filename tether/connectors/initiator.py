"""This host's iSCSI initiator name."""

from __future__ import annotations

import os
import re
import secrets

from tether import statedir

OPEN_ISCSI_FILE = "/etc/iscsi/initiatorname.iscsi"


def host_initiator_iqn(configured: str | None, state_dir: str, hostname: str) -> str:
    """The configured IQN, else open-iscsi's, else one generated once and kept
    in the state directory (so ACLs stay valid across restarts)."""
    if configured:
        return configured
    try:
        with open(OPEN_ISCSI_FILE, encoding="ascii") as f:
            for line in f:
                if line.startswith("InitiatorName="):
                    return line.split("=", 1)[1].strip()
    except FileNotFoundError:
        pass
    path = os.path.join(state_dir, "initiator_iqn")
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except FileNotFoundError:
        pass
    safe = re.sub(r"[^a-z0-9.\-]", "-", hostname.lower()) or "host"
    iqn = f"iqn.2010-10.org.tether:{safe}-{secrets.token_hex(4)}"
    os.makedirs(state_dir, mode=statedir.PRIVATE_DIR, exist_ok=True)
    return statedir.read_or_create(path, iqn + "\n").strip()
