"""tgt driver: the exact tgtadm sequences (through :class:`CommandAdmin`),
against a recording runner that plays tgtd's answers (parsing is checked on
output captured from tgtd 1.0.85).  The socket's encoding of the same
requests is checked in ``test_tgtadm.py``."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from tether.executor import CommandError, CommandResult
from tether.volume.targets.base import ChapCredentials, ExportSpec, TargetError
from tether.volume.targets.tgt import TgtTarget, parse_accounts, parse_show
from tether.volume.targets.tgtadm import CommandAdmin, Request

VID = "6f1c2f0e-1d2b-4b8e-9a57-0c6f3f1e9d11"
IQN = f"iqn.2010-10.org.tether:volume-{VID}"
A, B = "iqn.2026-11.org.example:a", "iqn.2026-11.org.example:b"

SHOW = f"""Target 1: iqn.2010-10.org.other:thing
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
    LUN information:
        LUN: 0
            Type: controller
            Backing store type: null
            Backing store path: None
    Account information:
    ACL information:
        ALL
Target 3: {IQN}
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
        I_T nexus: 2
            Initiator: {A} alias: guest-host
            Connection: 0
                IP Address: 127.0.0.1
    LUN information:
        LUN: 0
            Type: controller
            Backing store path: None
        LUN: 1
            Type: disk
            Size: 67 MB, Block size: 512
            Backing store type: rdwr
            Backing store path: /var/lib/tether/volumes/volume-{VID}
            Backing store flags:
    Account information:
        tetheruser1
    ACL information:
        {A}
"""


class Runner:
    """Answers ``--op show`` with a canned text; records everything else."""

    def __init__(self, show: str = "", fail: dict[str, str] | None = None,
                 accounts: str = "") -> None:
        self.show = show
        self.accounts = accounts
        self.fail = fail or {}
        self.calls: list[list[str]] = []
        self.secrets_seen: list[Sequence[str]] = []

    def run(self, argv: Sequence[str], *, check: bool = True, secrets: Sequence[str] = (),
            timeout: float | None = 60.0, cwd: str | None = None) -> CommandResult:
        args = list(argv)
        assert args[:5] == ["tgtadm", "-C", "7", "--lld", "iscsi"]
        op = args[5:]
        if op[:4] == ["--op", "show", "--mode", "target"]:
            return CommandResult(tuple(args), 0, self.show, "")
        if op[:4] == ["--op", "show", "--mode", "account"]:
            return CommandResult(tuple(args), 0, self.accounts, "")
        self.calls.append(op)
        self.secrets_seen.append(secrets)
        for needle, message in self.fail.items():
            if needle in " ".join(op):
                raise CommandError(tuple(args), 22, "", message)
        return CommandResult(tuple(args), 0, "", "")


class SocketSide:
    """Where CommandAdmin sends the requests that carry a password (tgtd's
    socket): noted in the runner's call list, in order, marked as such."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def request(self, req: Request) -> str:
        self.runner.calls.append(["socket", req.op, req.mode, *[
            f"{k}={v}" for k, v in req.params]])
        return ""


def _driver(runner: Runner) -> TgtTarget:
    return TgtTarget(runner, "127.0.0.1", 3260, control_port=7,
                     admin=CommandAdmin(runner, control_port=7,
                                        secret_admin=SocketSide(runner)))


CHAP = ChapCredentials("tetheruser1", "s3cretpassword16")


def test_parse_show_reads_targets_sessions_acl_accounts_and_luns() -> None:
    shown = parse_show(SHOW)
    assert set(shown) == {"iqn.2010-10.org.other:thing", IQN}
    t = shown[IQN]
    assert (t.tid, t.sessions, t.acl, t.accounts) == (3, [A], [A], ["tetheruser1"])
    assert t.backing == {1: f"/var/lib/tether/volumes/volume-{VID}"}
    assert shown["iqn.2010-10.org.other:thing"].backing == {}


def test_new_export_sequence() -> None:
    runner = Runner(show=SHOW.split("Target 3", maxsplit=1)[0])
    loc = _driver(runner).export(ExportSpec(VID, "/v/f", CHAP, frozenset({A, B})))
    assert (loc.target_iqn, loc.target_portal, loc.target_lun) == (IQN, "127.0.0.1:3260", 1)
    assert runner.calls == [
        ["--op", "new", "--mode", "target", "--tid", "2", "--targetname", IQN],
        ["--op", "new", "--mode", "logicalunit", "--tid", "2", "--lun", "1",
         "--backing-store", "/v/f", "--bstype", "rdwr"],
        ["socket", "new", "account", "user=tetheruser1", "password=s3cretpassword16"],
        ["--op", "bind", "--mode", "account", "--tid", "2", "--user", "tetheruser1"],
        ["--op", "bind", "--mode", "target", "--tid", "2", "--initiator-name", A],
        ["--op", "bind", "--mode", "target", "--tid", "2", "--initiator-name", B],
    ]
    # no command line carries the password (every local user can read them)
    assert not [argv for argv in runner.calls if argv[0] != "socket"
                and "s3cretpassword16" in " ".join(argv)]


def test_existing_export_only_changes_the_acl_difference() -> None:
    runner = Runner(show=SHOW)
    path = f"/var/lib/tether/volumes/volume-{VID}"
    _driver(runner).export(ExportSpec(VID, path, CHAP, frozenset({B})))
    assert runner.calls == [
        ["--op", "bind", "--mode", "target", "--tid", "3", "--initiator-name", B],
        ["--op", "unbind", "--mode", "target", "--tid", "3", "--initiator-name", A],
    ]


def test_export_is_a_no_op_when_everything_matches() -> None:
    runner = Runner(show=SHOW)
    _driver(runner).export(ExportSpec(VID, f"/var/lib/tether/volumes/volume-{VID}", CHAP,
                                      frozenset({A})))
    assert runner.calls == []


def test_unexport_forces_target_and_deletes_account() -> None:
    runner = Runner(show=SHOW)
    _driver(runner).unexport(VID)
    assert runner.calls == [
        ["--op", "delete", "--force", "--mode", "target", "--tid", "3"],
        ["--op", "delete", "--mode", "account", "--user", "tetheruser1"],
    ]


def test_unexport_of_absent_target_does_nothing() -> None:
    runner = Runner(show="")
    _driver(runner).unexport(VID)
    assert runner.calls == []


def test_allow_and_deny() -> None:
    runner = Runner(show=SHOW, fail={"bind --mode target --tid 3 --initiator-name "
                                     + A: "tgtadm: this access control rule already exists"})
    d = _driver(runner)
    d.allow(VID, A)  # already admitted: tolerated
    d.deny(VID, B)
    assert runner.calls[-1] == ["--op", "unbind", "--mode", "target", "--tid", "3",
                                "--initiator-name", B]
    with pytest.raises(TargetError, match="not exported"):
        _driver(Runner(show="")).allow(VID, A)


def test_failures_name_the_command_but_never_the_secret() -> None:
    runner = Runner(show="", fail={"--mode logicalunit": "tgtadm: out of memory"})
    with pytest.raises(TargetError) as err:
        _driver(runner).export(ExportSpec(VID, "/v/f", CHAP, frozenset({A})))
    assert "out of memory" in str(err.value)
    assert "s3cretpassword16" not in str(err.value)


def test_exports_and_sessions_read_back() -> None:
    d = _driver(Runner(show=SHOW))
    state = d.exports()
    assert list(state) == [VID]  # targets without our prefix are not ours
    assert state[VID].initiators == {A} and state[VID].chap_username == "tetheruser1"
    assert state[VID].sessions == {A}
    assert d.sessions(VID) == {A}


# what tgtd 1.0.85 answers to --op show --mode account (nothing when it has none)
ACCOUNTS = """Account list:
    other1
    tether0a1b2c3d4e5f60
"""


def test_accounts_are_read_back_by_name() -> None:
    assert parse_accounts(ACCOUNTS) == {"other1", "tether0a1b2c3d4e5f60"}
    assert parse_accounts("") == frozenset()
    assert _driver(Runner(accounts=ACCOUNTS)).accounts() == {"other1", "tether0a1b2c3d4e5f60"}


def test_remove_account_deletes_it_and_tolerates_its_absence() -> None:
    runner = Runner(show=SHOW, fail={"--user gone": "tgtadm: can't find the account"})
    d = _driver(runner)
    assert d.exports()[VID].chap_username == "tetheruser1"
    d.remove_account("tetheruser1")
    d.remove_account("gone")
    assert runner.calls == [["--op", "delete", "--mode", "account", "--user", "tetheruser1"],
                            ["--op", "delete", "--mode", "account", "--user", "gone"]]
    # tgtd unbound it: our view says so too, so a new export binds it again
    d.export(ExportSpec(VID, f"/var/lib/tether/volumes/volume-{VID}", CHAP, frozenset({A})))
    assert runner.calls[-1] == ["--op", "bind", "--mode", "account", "--tid", "3", "--user",
                                "tetheruser1"]


def test_stale_view_is_reloaded_and_the_change_retried() -> None:
    """tgtd restarted behind our back: the first change fails, tgtd is read
    again, and the export is rebuilt from scratch."""

    class LostTarget(Runner):
        def run(self, argv: Sequence[str], **kw: object) -> CommandResult:
            if "--initiator-name" in argv and self.show:  # tid 3 is gone now
                self.show = ""
                self.calls.append(list(argv)[5:])
                raise CommandError(tuple(argv), 22, "", "tgtadm: can't find the target")
            return super().run(argv, **kw)  # type: ignore[arg-type]

    runner = LostTarget(show=SHOW)
    d = _driver(runner)
    path = f"/var/lib/tether/volumes/volume-{VID}"
    d.export(ExportSpec(VID, path, CHAP, frozenset({A, B})))
    assert runner.calls == [
        ["--op", "bind", "--mode", "target", "--tid", "3", "--initiator-name", B],
        ["--op", "new", "--mode", "target", "--tid", "1", "--targetname", IQN],
        ["--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1",
         "--backing-store", path, "--bstype", "rdwr"],
        ["socket", "new", "account", "user=tetheruser1", "password=s3cretpassword16"],
        ["--op", "bind", "--mode", "account", "--tid", "1", "--user", "tetheruser1"],
        ["--op", "bind", "--mode", "target", "--tid", "1", "--initiator-name", A],
        ["--op", "bind", "--mode", "target", "--tid", "1", "--initiator-name", B],
    ]


def test_show_is_read_once_then_kept_up_to_date() -> None:
    shows = 0

    class Counting(Runner):
        def run(self, argv: Sequence[str], **kw: object) -> CommandResult:
            nonlocal shows
            if "show" in argv:
                shows += 1
            return super().run(argv, **kw)  # type: ignore[arg-type]

    runner = Counting(show="")
    d = _driver(runner)
    for _ in range(3):
        d.export(ExportSpec(VID, "/v/f", CHAP, frozenset({A})))
        d.unexport(VID)
    assert shows == 1
    assert runner.calls.count(["--op", "new", "--mode", "target", "--tid", "1",
                               "--targetname", IQN]) == 3
