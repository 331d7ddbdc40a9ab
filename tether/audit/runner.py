"""Running an audit: which parts of this host there are to look at, the checks
in order, the repairs and the audit after them, and ``tether audit`` itself.

The audit opens the database, libvirt and tgtd as the services do
(``tether.service``) but starts no RPC server, registers no service and
holds no lock: it can run with or without ``tether serve``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import IO

from oslo_config import cfg
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from tether import config
from tether.audit import checks, host_checks, snapshot
from tether.audit.findings import Finding, Outcome, Report, keys, render_json, render_text
from tether.audit.repair import Repairer
from tether.audit.snapshot import Reader, Scope
from tether.compute.api import COMPUTE_BINARY
from tether.compute.repository import ComputeRepository
from tether.db import services
from tether.db.api import Database
from tether.db.models import utcnow
from tether.exceptions import BackendError
from tether.service import VOLUME_BINARY, Drivers, make_connector, make_target, make_virt
from tether.virt.driver import VirtError
from tether.volume import secret_box
from tether.volume.backends.file import FileBackend
from tether.volume.repository import VolumeRepository
from tether.volume.targets.base import TargetError

LOG = logging.getLogger(__name__)


class CannotAudit(Exception):
    """What the audit compares could not be read (``tether audit`` exits 2)."""


def scope_of(conf: cfg.ConfigOpts, db: Database) -> Scope:
    host = conf.host
    backend = f"{host}@{conf.volume.backend_name}"
    with db.begin() as c:
        servers = bool(ComputeRepository.servers_on_host(c, host))
        volumes = bool(VolumeRepository.volumes_of_host(c, backend))
    return Scope(host, backend, dt.timedelta(seconds=conf.compute.operation_timeout),
                 conf.compute.service_down_time,
                 compute=servers or services.find(db, host, COMPUTE_BINARY) is not None,
                 volume=volumes or services.find(db, backend, VOLUME_BINARY) is not None)


class Auditor:
    def __init__(self, conf: cfg.ConfigOpts, db: Database, drivers: Drivers | None = None,
                 now: Callable[[], dt.datetime] = utcnow) -> None:
        """``drivers``: instead of the configured ones (tests); only those of
        the parts this host has are made."""
        drivers = drivers or Drivers()
        self.scope = scope_of(conf, db)
        self.prefix: str = conf.compute.domain_prefix
        self.uri: str = conf.compute.libvirt_uri
        virt, connector, target = drivers.virt, drivers.connector, drivers.target
        if self.scope.compute:
            virt = virt if virt is not None else make_virt(conf)
            connector = connector if connector is not None else make_connector(conf, virt)
        if self.scope.volume:
            target = target if target is not None else make_target(conf)
        volumes_dir = config.volumes_dir(conf)
        self.backing_path = lambda vid: os.path.join(volumes_dir, f"volume-{vid}")
        self.reader = Reader(db, self.scope, virt, target, connector, now)
        self.repairer = Repairer(db, self.scope.backend, virt, target,
                                 lambda: FileBackend(volumes_dir),
                                 conf.compute.operation_timeout,
                                 lambda: secret_box.load(conf, holds_sealed=True,
                                                         generate=False))

    def audit(self) -> tuple[list[Finding], dict[str, int]]:
        """One look: every finding, and how much was looked at."""
        db, host = self._read()
        busy = snapshot.busy(db, self.scope)
        found = [*checks.operations(db, self.scope), *checks.tasks(db, busy),
                 *checks.volumes(db, self.scope, busy), *checks.mappings(db, self.scope, busy)]
        if host.guests is not None:
            found += host_checks.domains(db, host, self.scope, busy, self.prefix)
            found += host_checks.secrets(db, host, self.scope, busy, self.prefix)
        found += host_checks.exports(db, host, self.scope, busy, self.backing_path)
        found += host_checks.accounts(db, host)
        found += host_checks.sessions(db, host, self.scope, busy)
        checked = {"server": len(db.servers_on(self.scope.host)) if self.scope.compute else 0,
                   "domain": len(host.guests or {}),
                   "volume": sum(v.host == self.scope.backend for v in db.volumes.values()),
                   "export": len(host.exports or {})}
        return found, {k: n for k, n in checked.items() if n}

    def _read(self) -> tuple[snapshot.DbState, snapshot.HostState]:
        try:
            return self.reader.read()
        except VirtError as exc:
            raise CannotAudit(f"libvirt ({self.uri}) could not be read ({exc}); are virtlogd "
                              "and libvirtd running?") from exc
        except TargetError as exc:
            raise CannotAudit(f"tgtd could not be read ({exc}); is tgtd running?") from exc
        except BackendError as exc:
            raise CannotAudit(f"this host's iSCSI initiator or sessions could not be read "
                              f"({exc})") from exc
        except SQLAlchemyError as exc:
            raise CannotAudit(f"the database could not be read ({exc})") from exc

    def run(self, repair: bool) -> Report:
        findings, checked = self.audit()
        drifts = [f for f in findings if f.state == "drift"]
        if not repair or not drifts:
            return Report(findings, [] if repair else None, [] if repair else None, checked)
        confirmed = keys(self.audit()[0]) if any(f.repairable for f in drifts) else set()
        outcomes = [self._repair(f, confirmed) for f in drifts]
        after = [f for f in self.audit()[0] if f.state == "drift"]
        return Report(findings, outcomes, after, checked)

    def _repair(self, f: Finding, confirmed: set[tuple[str, str]]) -> Outcome:
        if not f.repairable:
            return Outcome(f, "left", f.advice or "")
        if f.key not in confirmed:
            return Outcome(f, "gone", "not there any more when checked again before the "
                                      "repair (an operation or a service dealt with it)")
        try:
            done = self.repairer.repair(f)
        except Exception as exc:
            LOG.exception("audit: repairing %s %s failed", f.kind, f.resource)
            return Outcome(f, "left", f"the repair ({f.fix}) failed: {exc}; see the log, and "
                                      "audit again")
        LOG.warning("audit: %s %s: %s", f.kind, f.resource, done)
        return Outcome(f, "repaired", done)


def open_database(conf: cfg.ConfigOpts) -> Database:
    """The services' database, as it is (never created or upgraded here)."""
    from tether.service import open_database as open_db

    url = make_url(config.database_url(conf))
    if url.get_backend_name() == "sqlite" and url.database and not os.path.exists(url.database):
        raise CannotAudit(f"there is no database at {url.database}: is --state-dir (or "
                          "[database] connection) the services' one?")
    try:
        return open_db(conf, upgrade=False)
    except SQLAlchemyError as exc:
        raise CannotAudit(f"the database {url.render_as_string(hide_password=True)} cannot "
                          f"be read ({exc})") from exc
    except RuntimeError as exc:  # not at the current schema
        raise CannotAudit(str(exc)) from exc


def command(conf: cfg.ConfigOpts, *, repair: bool, fmt: str = "text", debug: bool = False,
            drivers: Drivers | None = None, out: IO[str] | None = None,
            err: IO[str] | None = None) -> int:
    """``tether audit``: 0 no drift (or all of it repaired, and the audit after
    the repairs found none), 1 drift remains, 2 the audit could not run."""
    out = out or sys.stdout
    err = err or sys.stderr
    db: Database | None = None
    try:
        db = open_database(conf)
        report = Auditor(conf, db, drivers).run(repair)
    except Exception as exc:
        why = str(exc) if isinstance(exc, CannotAudit) else f"the audit failed: {exc}"
        LOG.error("audit: cannot audit: %s", why, exc_info=not isinstance(exc, CannotAudit))
        if debug:
            traceback.print_exc(file=err)
        print(f"tether audit: cannot audit: {why}", file=err)
        if fmt == "json":
            print(json.dumps({"clean": False, "exit_code": 2, "error": why}), file=out)
        return 2
    finally:
        if db is not None:
            db.dispose()
    if fmt == "json":
        print(render_json(report), file=out)
    else:
        print("\n".join(render_text(report)), file=out)
    return report.exit_code
