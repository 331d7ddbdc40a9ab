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
