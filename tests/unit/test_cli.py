"""The ``tether`` CLI against a running embedded Tether (fake drivers, real
HTTP on free ports): what an operator types and reads."""

from __future__ import annotations

import logging
import os
import re
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tether import cli, config
from tether.cli import main
from tether.connectors.fake import FakeConnector
from tether.service import Drivers, Embedded
from tether.virt.fake import FakeDriver
from tether.volume.targets.fake import FakeTarget


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    state = tmp_path_factory.mktemp("cli")
    conf_file = state / "tether.conf"
    conf_file.write_text(
        f"[DEFAULT]\ntransport_url = tether-inproc://cli-{uuid.uuid4().hex}\n"
        f"[api]\nauth_strategy = noauth\ncompute_port = {_free_port()}\n"
        f"volume_port = {_free_port()}\n"
        f"image_port = {_free_port()}\nservice_token = cli-service-token\n")
    conf = config.load(str(conf_file), str(state))
    app = Embedded(conf, Drivers(FakeTarget(), FakeDriver(), FakeConnector()))
    app.start()
    try:
        yield ["--config-file", str(conf_file), "--state-dir", str(state),
               "--token", "admin:p1"]
    finally:
        app.stop()


def run(capsys: pytest.CaptureFixture[str], base: list[str], *args: str) -> tuple[int, str]:
    rc = main([*base, *args])
    return rc, capsys.readouterr().out


def test_volume_and_server_commands(running: list[str],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run(capsys, running, "volume", "create", "--size", "1", "cli-vol")
    assert rc == 0 and re.search(r"status\s+available", out)
    rc, out = run(capsys, running, "server", "create", "cli-vm")
    assert rc == 0 and re.search(r"status\s+ACTIVE", out)

    rc, out = run(capsys, running, "server", "add", "volume", "cli-vm", "cli-vol")
    assert rc == 0 and "/dev/sdb" in out
    rc, out = run(capsys, running, "volume", "list")
    assert "cli-vol" in out and "in-use" in out

    rc, out = run(capsys, running, "server", "remove", "volume", "cli-vm", "cli-vol")
    assert rc == 0
    assert "s1.1.1:guest_device_removal" in out and "detach Success: volume available" in out

    rc, out = run(capsys, running, "server", "event", "list", "cli-vm")
    assert "detach_volume" in out and "attach_volume" in out
    request_id = next(line.split()[0] for line in out.splitlines()
                      if "detach_volume" in line)
    rc, out = run(capsys, running, "server", "event", "show", "cli-vm", request_id)
    assert rc == 0 and "total" in out
    assert [line.split()[0] for line in out.splitlines()[1:]] == [
        "s1:compute_api", "s1.1:driver_detach", "s1.1.1:guest_device_removal",
        "s2:host_disconnect", "s1.2+s1.3:attachment_delete"]

    rc, out = run(capsys, running, "server", "remove", "volume", "--no-wait", "cli-vm",
                  "cli-vol")
    assert rc == 1  # no longer attached


def test_errors_are_one_clear_line(running: list[str],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    rc = main([*running, "volume", "show", "no-such-volume"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("tether: HTTP 404")


def test_missing_config_file(capsys: pytest.CaptureFixture[str], tmp_path: Any) -> None:
    assert main(["--config-file", str(tmp_path / "nope.conf"), "volume", "list"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_serve_without_tgtd_says_what_to_start(capsys: pytest.CaptureFixture[str],
                                               tmp_path: Any) -> None:
    conf = tmp_path / "tether.conf"
    # a control port no tgtd listens on (tgtd's socket for port N is socket.N)
    port = next(p for p in range(32767, 1, -1)
                if not os.path.exists(f"/var/run/tgtd/socket.{p}"))
    conf.write_text(f"[DEFAULT]\ntransport_url = tether-inproc://{uuid.uuid4().hex}\n"
                    f"[volume]\ntgt_control_port = {port}\n"
                    f"[api]\ncompute_port = {_free_port()}\nvolume_port = {_free_port()}\n"
                    f"image_port = {_free_port()}\n")
    rc = main(["--config-file", str(conf), "--state-dir", str(tmp_path), "serve"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "is tgtd running?" in err


def test_image_import_list_and_show(running: list[str], capsys: pytest.CaptureFixture[str],
                                    tmp_path: Any) -> None:
    disk = tmp_path / "cli-disk.raw"
    disk.write_bytes(b"\0" * 65536)
    rc, out = run(capsys, running, "image", "import", str(disk), "--name", "cli-img",
                  "--property", "hw_disk_bus=virtio")
    assert rc == 0 and re.search(r"disk_format\s+raw", out)
    rc, out = run(capsys, running, "image", "list")
    assert rc == 0 and re.search(r"cli-img\s+raw\s+active\s+65536", out)
    rc, out = run(capsys, running, "image", "show", "cli-img")
    assert rc == 0 and re.search(r"hw_disk_bus\s+virtio", out)
    with pytest.raises(SystemExit):
        main([*running, "image", "import", str(disk), "--property", "novalue"])


def test_logging_goes_to_the_file_and_stderr_formatted_once(
        tmp_path: Any, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    conf = config.load(state_dir=str(tmp_path))
    formatted: list[str] = []
    real_format = logging.Formatter.format

    def counting(self: logging.Formatter, record: logging.LogRecord) -> str:
        formatted.append(record.getMessage())
        return real_format(self, record)

    monkeypatch.setattr(logging.Formatter, "format", counting)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        cli.setup_logging(conf, to_stderr=True)
        logging.getLogger("tether.test").info("volume %s attached", "v1")
        logging.getLogger("tether.test").debug("not at INFO")
        for h in root.handlers:
            h.flush()
        with open(tmp_path / "tether.log") as f:
            in_file = f.read()
    finally:
        for h in root.handlers:
            h.close()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    err = capsys.readouterr().err
    assert in_file.count("volume v1 attached") == 1 and err.count("volume v1 attached") == 1
    assert " INFO tether.test [MainThread] volume v1 attached" in in_file
    assert "not at INFO" not in in_file + err
    assert formatted == ["volume v1 attached"]


def _nothing_running(tmp_path: Any) -> tuple[list[str], int, int]:
    """Arguments for a Tether whose ports nothing listens on."""
    compute, volume = _free_port(), _free_port()
    conf = tmp_path / "tether.conf"
    conf.write_text(f"[api]\nauth_strategy = noauth\ncompute_port = {compute}\n"
                    f"volume_port = {volume}\nimage_port = {_free_port()}\n")
    return ["--config-file", str(conf), "--state-dir", str(tmp_path)], compute, volume


def test_local_mode_with_no_identity_yet_says_so_in_one_line(
        tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """The default (local) mode makes the admin's token from the state dir's
    database: a state dir nothing has served from is named, with the hint."""
    base, _, _ = _nothing_running(tmp_path)
    (tmp_path / "tether.conf").write_text("[api]\nauth_strategy = local\n")
    assert main([*base, "server", "list"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("tether: no local identity in sqlite:///") and str(tmp_path) in err
    assert "is `tether serve` running with this --state-dir? (or give --token)" in err


def test_nothing_running_is_one_line_naming_the_url(
        tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    base, compute, volume = _nothing_running(tmp_path)
    assert main([*base, "server", "list"]) == 1
    out, err = capsys.readouterr()
    assert out == ""  # no table header before the error
    assert err == (f"tether: cannot reach http://127.0.0.1:{compute}/v2.1 (connection "
                   "refused); is `tether serve` running?\n")
    assert main([*base, "volume", "list"]) == 1
    assert capsys.readouterr().err == (
        f"tether: cannot reach http://127.0.0.1:{volume}/v3 (connection refused); is "
        "`tether serve` running?\n")


def test_debug_adds_the_traceback_once(tmp_path: Any,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    base, compute, _ = _nothing_running(tmp_path)
    assert main(["--debug", *base, "server", "list"]) == 1
    err = capsys.readouterr().err
    # the chain (httpcore's error, httpx's, ours) printed once
    assert err.count("tether.client.ApiUnreachable: cannot reach") == 1
    assert "httpx.ConnectError" in err
    assert err.endswith(f"tether: cannot reach http://127.0.0.1:{compute}/v2.1 (connection "
                        "refused); is `tether serve` running?\n")
    assert err.count("tether: cannot reach") == 1


def test_a_failed_demo_is_told_once_and_its_traceback_goes_to_the_log(
        tmp_path: Any, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo logs to the file and stderr (like ``tether serve``): its
    failure is one line on stderr, the traceback in the log file only."""
    from tether import demo

    def failing(conf: Any, args: Any) -> int:
        cli.setup_logging(conf, to_stderr=True)
        raise RuntimeError("guest agent of server A not ready after 120 s")

    monkeypatch.setattr(demo, "run", failing)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        rc = main(["--state-dir", str(tmp_path), "demo"])
        for h in root.handlers:
            h.flush()
    finally:
        for h in root.handlers:
            if h not in saved[0]:
                h.close()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    err = capsys.readouterr().err
    assert rc == 1
    assert err == ("tether: demo failed: RuntimeError: guest agent of server A not ready "
                   "after 120 s (--debug for the traceback)\n")
    log = (tmp_path / "tether.log").read_text()
    assert log.count("Traceback (most recent call last)") == 1
    assert "ERROR tether [MainThread] tether demo failed" in log


def test_audit_debug_flag_after_the_command_still_works() -> None:
    args = cli.build_parser().parse_args(["audit", "--debug"])
    assert args.debug is True
    args = cli.build_parser().parse_args(["--debug", "audit"])
    assert args.debug is True
    assert cli.build_parser().parse_args(["audit"]).debug is False
