"""Libvirt XML for Tether's guests, disks and secrets: building and reading,
pure functions (no libvirt connection needed, unit-tested on their own)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape, quoteattr

from tether.virt.driver import (
    NAME_PREFIX,
    AttachedDisk,
    BlockDiskSource,
    DiskSpec,
    NetworkDiskSource,
    ServerSpec,
)


def domain_xml(spec: ServerSpec, virt_type: str) -> str:
    """A guest with ACPI (PCI hot-unplug needs it), a virtio-scsi controller for
    volumes, a serial console to a file and a second serial port on a unix
    socket (a guest agent) when asked, and no disk of its own unless it boots
    an image or a volume."""
    boot = ""
    root = ""
    if spec.root_volume:
        root = disk_xml(spec.root_volume, boot_order=1)
    elif spec.root_disk:
        boot = "<boot dev='hd'/>"
        root = (f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                f"<source file={quoteattr(spec.root_disk)}/>"
                "<target dev='vda' bus='virtio'/><alias name='ua-root'/></disk>")
    if spec.kernel:
        boot = f"<kernel>{escape(spec.kernel)}</kernel>"
        if spec.initrd:
            boot += f"<initrd>{escape(spec.initrd)}</initrd>"
        if spec.cmdline:
            boot += f"<cmdline>{escape(spec.cmdline)}</cmdline>"
    console = ""
    if spec.console_log:
        console = (f"<serial type='file'><source path={quoteattr(spec.console_log)}/>"
                   "<target port='0'/></serial>")
    if spec.agent_socket:
        console += (f"<serial type='unix'><source mode='bind' "
                    f"path={quoteattr(spec.agent_socket)}/><target port='1'/></serial>")
    return f"""<domain type={quoteattr(virt_type)}>
  <name>{escape(spec.name)}</name>
  <uuid>{escape(spec.uuid)}</uuid>
  <memory unit='MiB'>{spec.memory_mib}</memory>
  <vcpu>{spec.vcpus}</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>{boot}</os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <controller type='scsi' index='0' model='virtio-scsi'/>
    {root}
    {console}
    <memballoon model='none'/>
  </devices>
</domain>"""


def disk_xml(disk: DiskSpec, boot_order: int | None = None) -> str:
    src = disk.source
    driver = f"<driver name='qemu' type='raw' cache={quoteattr(disk.cache)}/>"
    target = f"<target dev={quoteattr(disk.target_dev)} bus={quoteattr(disk.bus)}/>"
    boot = "" if boot_order is None else f"<boot order='{boot_order}'/>"
    tail = (f"{target}<serial>{escape(disk.volume_id)}</serial>"
            f"<alias name={quoteattr(disk.alias)}/>{boot}")
    if isinstance(src, BlockDiskSource):
        return (f"<disk type='block' device='disk'>{driver}"
                f"<source dev={quoteattr(src.path)}/>{tail}</disk>")
    assert isinstance(src, NetworkDiskSource)
    auth = ""
    if src.auth_username and src.secret_uuid:
        auth = (f"<auth username={quoteattr(src.auth_username)}>"
                f"<secret type='iscsi' uuid={quoteattr(src.secret_uuid)}/></auth>")
    name = f"{src.target_iqn}/{src.lun}"
    return (f"<disk type='network' device='disk'>{driver}"
            f"<source protocol='iscsi' name={quoteattr(name)}>"
            f"<host name={quoteattr(src.host)} port={quoteattr(str(src.port))}/>"
            f"<initiator><iqn name={quoteattr(src.initiator_iqn)}/></initiator>"
            f"{auth}</source>{tail}</disk>")


def secret_xml(volume_id: str, prefix: str = NAME_PREFIX) -> str:
    usage = secret_usage(volume_id, prefix)
    return ("<secret ephemeral='no' private='yes'>"
            f"<description>CHAP secret of Tether volume {escape(volume_id)}</description>"
            f"<usage type='iscsi'><target>{escape(usage)}</target></usage>"
            "</secret>")


def secret_usage(volume_id: str, prefix: str = NAME_PREFIX) -> str:
    """The usage id that finds a volume's secret: ``tether-volume-<id>`` with
    the default prefix."""
    return f"{prefix}volume-{volume_id}"


def volume_of_secret(usage: str, prefix: str = NAME_PREFIX) -> str | None:
    """The volume id in a secret's usage id, or None if not one of ours."""
    head = secret_usage("", prefix)
    if not usage.startswith(head):
        return None
    return usage[len(head):] or None


def _attached(disk: ET.Element) -> AttachedDisk:
    target = disk.find("target")
    alias = disk.find("alias")
    serial = disk.find("serial")
    source = disk.find("source")
    if source is None:
        where = ""
    elif disk.get("type") == "network":
        host = source.find("host")
        hostport = (f"{host.get('name')}:{host.get('port')}" if host is not None else "")
        where = f"{source.get('protocol')}://{hostport}/{source.get('name')}"
    else:
        where = source.get("dev") or source.get("file") or ""
    return AttachedDisk(
        target_dev=target.get("dev", "") if target is not None else "",
        bus=target.get("bus", "") if target is not None else "",
        alias=alias.get("name") if alias is not None else None,
        serial=serial.text if serial is not None else None,
        source=where)


def parse_disks(domain: str) -> list[AttachedDisk]:
    root = ET.fromstring(domain)  # noqa: S314 - XML from our own libvirtd
    return [_attached(d) for d in root.iter("disk")]


def find_disk_xml(domain: str, alias: str) -> str | None:
    """The ``<disk>`` element with user alias ``alias``, as XML text."""
    root = ET.fromstring(domain)  # noqa: S314 - XML from our own libvirtd
    for disk in root.iter("disk"):
        a = disk.find("alias")
        if a is not None and a.get("name") == alias:
            return ET.tostring(disk, encoding="unicode")
    return None
