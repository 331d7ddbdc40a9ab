"""``tether audit [--repair]``: compare the database with what this host
really holds -- libvirt's domains, disks and secrets, tgtd's targets, LUNs,
ACLs, accounts and sessions, the host's own iSCSI sessions -- and with
itself (operations, server tasks, volume statuses, attachments); print each
drift, and with ``--repair`` fix what is safe to fix from outside the
services.  ``docs/audit.md`` lists every check.

* :mod:`~tether.audit.snapshot`: reading the database and the host;
* :mod:`~tether.audit.checks`: the database's own checks;
* :mod:`~tether.audit.host_checks`: the host against the database;
* :mod:`~tether.audit.repair`: the repairs;
* :mod:`~tether.audit.findings`: findings and the report (text, JSON);
* :mod:`~tether.audit.runner`: one audit, the repairs, the command.
"""

from tether.audit.runner import Auditor, CannotAudit, command

__all__ = ["Auditor", "CannotAudit", "command"]
