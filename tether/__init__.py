"""Tether: volume attach/detach control plane for libvirt guests over iSCSI."""

__version__ = "0.1.0"
