"""tgtd's socket against tgtadm, on a real tgtd: the same requests give the
same results, the same refusals (as error codes) and the same state."""

from __future__ import annotations

import contextlib
import os
import uuid

from tests.integration.daemons import Tgtd
from tether.executor import ProcessRunner
from tether.volume.targets.tgtadm import (
    AdminError,
    AutoAdmin,
    CommandAdmin,
    Request,
    SocketAdmin,
    TgtAdmin,
)


def _script(tid: int, name: str, path: str) -> list[Request]:
    iqn, user, init = f"iqn.2026-11.test:{name}", f"u{name}", f"iqn.2026-11.init:{name}"
    secret = f"pw{name}"
    return [
        Request("new", "target", tid=tid, params=(("targetname", iqn),)),
        Request("new", "target", tid=tid, params=(("targetname", iqn),)),  # exists
        Request("new", "logicalunit", tid=tid, lun=1, params=(("path", path),
                                                            ("bstype", "rdwr"))),
        Request("new", "logicalunit", tid=tid, lun=2, params=(("path", path + ".missing"),
                                                            ("bstype", "rdwr"))),
        Request("new", "account", params=(("user", user), ("password", secret)),
                secrets=(secret,)),
        Request("new", "account", params=(("user", user), ("password", secret)),
                secrets=(secret,)),  # exists
        Request("bind", "account", tid=tid, params=(("user", user),)),
        Request("bind", "account", tid=tid, params=(("user", user + "x"),)),  # no account
        Request("bind", "target", tid=tid, params=(("initiator-name", init),)),
        Request("bind", "target", tid=tid, params=(("initiator-name", init),)),  # exists
        Request("unbind", "target", tid=tid, params=(("initiator-name", init + "x"),)),
        Request("delete", "logicalunit", tid=tid, lun=7),  # no such LUN
        Request("delete", "target", tid=tid + 1000, force=True),  # no such target
    ]


def _run(admin: TgtAdmin, script: list[Request]) -> list[str | None]:
    outcome: list[str | None] = []
    for req in script:
        try:
            admin.request(req)
            outcome.append(None)
        except AdminError as exc:
            outcome.append(exc.code or str(exc))
    return outcome


def _shown(admin: TgtAdmin, tid: int, name: str) -> str:
    text = admin.request(Request("show", "target"))
    block = text.split(f"Target {tid}: ", 1)[1].split("\nTarget ", 1)[0]
    # a LUN's SCSI id and serial number derive from the tid
    return "\n".join(line for line in block.replace(name, "NAME").splitlines()
                     if not line.strip().startswith(("SCSI ID:", "SCSI SN:")))


def _exercise(admin: TgtAdmin, cleanup: TgtAdmin, tid: int, path: str
              ) -> tuple[list[str | None], str]:
    """The script's outcomes through ``admin`` and the target it left, as
    tgtadm shows it; then remove what it made."""
    name = uuid.uuid4().hex[:8]
    try:
        return _run(admin, _script(tid, name, path)), _shown(cleanup, tid, name)
    finally:
        for req in (Request("delete", "target", tid=tid, force=True),
                    Request("delete", "account", params=(("user", f"u{name}"),))):
            with contextlib.suppress(AdminError):
                cleanup.request(req)


def test_socket_and_tgtadm_agree(tgtd: Tgtd, tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "lu")
    with open(path, "wb") as f:
        f.truncate(8 << 20)
    command = CommandAdmin(ProcessRunner(), tgtd.control_port)
    by_command = _exercise(command, command, 601, path)
    by_socket = _exercise(SocketAdmin(tgtd.control_port), command, 602, path)
    assert by_command[0] == by_socket[0] == [
        None, "target_exists", None, "invalid_request", None, "account_exists", None,
        "no_account", None, "acl_exists", "no_acl", "no_lun", "no_target"]
    assert by_command[1] == by_socket[1]  # the same target, LUN, account and ACL
    assert "Backing store path: " + path in by_socket[1]
    assert "iqn.2026-11.init:NAME" in by_socket[1] and "uNAME" in by_socket[1]


def test_auto_uses_the_socket_here(tgtd: Tgtd) -> None:
    admin = AutoAdmin(ProcessRunner(), tgtd.control_port)
    assert admin.request(Request("show", "system")).startswith("System:")
    assert isinstance(admin.chosen, SocketAdmin), "tgt 1.0.85 here speaks the socket format"
