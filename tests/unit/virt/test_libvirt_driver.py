"""Choosing KVM or plain emulation, and the guest's XML, without libvirtd."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.virt.driver import ServerSpec
from tether.virt.libvirt import driver as libvirt_driver
from tether.virt.libvirt.driver import LibvirtDriver, kvm_runs_os
from tether.virt.libvirt.xml import domain_xml

NO_OS = ServerSpec("u", "n", 1, 64)
LINUX = ServerSpec("u", "n", 1, 256, kernel="/k", initrd="/i", cmdline="console=ttyS0")


def test_kvm_runs_os_only_with_hardware_virtualisation(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 hypervisor\n")
    assert not kvm_runs_os(str(info))
    info.write_text("processor\t: 0\nflags\t\t: fpu vmx sse2\n")
    assert kvm_runs_os(str(info))
    assert not kvm_runs_os(str(tmp_path / "missing"))


@pytest.mark.parametrize(("usable", "runs_os", "spec", "kind"), [
    (True, False, NO_OS, "kvm"),  # software-nested KVM runs guests without an OS
    (True, False, LINUX, "qemu"),  # ... but cannot boot Linux: TCG
    (True, True, LINUX, "kvm"),
    (False, True, NO_OS, "qemu"),
])
def test_auto_picks_tcg_where_kvm_cannot_boot_the_guest(
        monkeypatch: pytest.MonkeyPatch, usable: bool, runs_os: bool, spec: ServerSpec,
        kind: str) -> None:
    monkeypatch.setattr(libvirt_driver, "kvm_usable", lambda: usable)
    driver = LibvirtDriver(connect=lambda uri: None)
    driver._kvm_runs_os = lambda: runs_os
    assert driver.domain_type(spec) == kind


def test_configured_virt_type_wins() -> None:
    assert LibvirtDriver(virt_type="kvm", connect=lambda uri: None).domain_type(LINUX) == "kvm"


def test_agent_port_is_the_second_serial_port() -> None:
    xml = domain_xml(ServerSpec("u", "n", 1, 256, kernel="/k", console_log="/c.log",
                                agent_socket="/s/agent.sock"), "qemu")
    assert "<serial type='file'><source path=\"/c.log\"/><target port='0'/>" in xml
    assert ("<serial type='unix'><source mode='bind' path=\"/s/agent.sock\"/>"
            "<target port='1'/></serial>") in xml
    assert "agent.sock" not in domain_xml(NO_OS, "kvm")


# -- what libvirt holds, as the audit reads it -------------------------------------

class _Named:
    def __init__(self, name: str, uuid: str) -> None:
        self._name, self._uuid = name, uuid

    def name(self) -> str:
        return self._name

    def UUIDString(self) -> str:
        return self._uuid


class _Secret:
    def __init__(self, usage_type: int, usage: str) -> None:
        self._type, self._usage = usage_type, usage

    def usageType(self) -> int:
        return self._type

    def usageID(self) -> str:
        return self._usage


class _Conn:
    def __init__(self, domains: list[_Named], secrets: list[_Secret]) -> None:
        self.domains, self.secrets = domains, secrets

    def isAlive(self) -> bool:
        return True

    def domainEventRegisterAny(self, *args: object) -> None:
        pass

    def listAllDomains(self, flags: int) -> list[_Named]:
        return self.domains

    def listAllSecrets(self, flags: int) -> list[_Secret]:
        return self.secrets


U1 = "c68c9a39-a82b-478c-a6bd-96fe22d88d49"
U2 = "0f6b0c1e-3a55-4a3e-9c8e-2b1d5e7f9a10"


@pytest.mark.parametrize(("prefix", "expected"), [("tether-", [U1]), ("tether-it1-", [U2])])
def test_list_servers_is_the_domains_named_with_the_prefix(prefix: str,
                                                           expected: list[str]) -> None:
    conn = _Conn([_Named(f"tether-{U1}", U1),
                  _Named(f"tether-it1-{U2}", U2),  # another deployment's prefix
                  _Named(f"tether-{U2}", U1),  # name and uuid disagree: not Tether's
                  _Named(f"tether-{U2.upper()}", U2.upper()),
                  _Named("tether-not-a-uuid", U1), _Named(f"other-{U1}", U1)], [])
    driver = LibvirtDriver(domain_prefix=prefix, connect=lambda uri: conn)
    assert driver.list_servers() == expected


def test_chap_secrets_are_the_iscsi_secrets_with_the_prefix() -> None:
    iscsi = libvirt_driver.libvirt.VIR_SECRET_USAGE_TYPE_ISCSI
    conn = _Conn([], [_Secret(iscsi, f"tether-volume-{U1}"),
                      _Secret(iscsi, f"tether-it1-volume-{U2}"),
                      _Secret(iscsi, "tether-volume-"), _Secret(iscsi, "someone-else"),
                      _Secret(iscsi + 1, f"tether-volume-{U2}")])
    assert LibvirtDriver(connect=lambda uri: conn).chap_secrets() == {U1}
    assert LibvirtDriver(domain_prefix="tether-it1-",
                         connect=lambda uri: conn).chap_secrets() == {U2}
