"""An in-memory iSCSI target with the tgt driver's semantics, for unit tests
and demos: records every operation and can be told to fail the next one."""

from __future__ import annotations

import dataclasses
import threading

from tether.volume.targets.base import (
    ExportLocation,
    ExportSpec,
    ExportState,
    TargetError,
    target_iqn,
)


class FakeTarget:
    def __init__(self, portal_ip: str = "127.0.0.1", portal_port: int = 3260) -> None:
        self.portal = f"{portal_ip}:{portal_port}"
        self._exports: dict[str, ExportState] = {}
        self._chap: dict[str, str] = {}
        self._accounts: set[str] = set()
        self._sessions: dict[str, frozenset[str]] = {}  # what initiators hold now
        self.calls: list[tuple[str, str]] = []
        self._fail: set[str] = set()
        self._lock = threading.Lock()

    def fail_next(self, operation: str) -> None:
        """Make the next call of ``operation`` (export, unexport, allow, deny) fail."""
        self._fail.add(operation)

    def _record(self, operation: str, volume_id: str) -> None:
        self.calls.append((operation, volume_id))
        if operation in self._fail:
            self._fail.discard(operation)
            raise TargetError(f"fake {operation} of volume {volume_id} failed")

    def location(self, volume_id: str) -> ExportLocation:
        return ExportLocation(target_iqn(volume_id), self.portal, 1)

    def export(self, spec: ExportSpec) -> ExportLocation:
        with self._lock:
            self._record("export", spec.volume_id)
            self._exports[spec.volume_id] = ExportState(
                spec.volume_id, target_iqn(spec.volume_id), frozenset(spec.initiators),
                spec.backing_path, spec.chap.username)
            self._chap[spec.volume_id] = spec.chap.password
            self._accounts.add(spec.chap.username)
        return self.location(spec.volume_id)

    def unexport(self, volume_id: str) -> None:
        with self._lock:
            self._record("unexport", volume_id)
            state = self._exports.pop(volume_id, None)
            self._chap.pop(volume_id, None)
            self._sessions.pop(volume_id, None)  # tgt's unexport forces them out
            if state is not None and state.chap_username:
                self._accounts.discard(state.chap_username)

    def allow(self, volume_id: str, initiator_iqn: str) -> None:
        with self._lock:
            self._record("allow", volume_id)
            state = self._exports.get(volume_id)
            if state is None:
                raise TargetError(f"volume {volume_id} is not exported")
            self._exports[volume_id] = ExportState(
                volume_id, state.target_iqn, state.initiators | {initiator_iqn},
                state.backing_path, state.chap_username)

    def deny(self, volume_id: str, initiator_iqn: str) -> None:
        with self._lock:
            self._record("deny", volume_id)
            state = self._exports.get(volume_id)
            if state is not None:
                self._exports[volume_id] = ExportState(
                    volume_id, state.target_iqn, state.initiators - {initiator_iqn},
                    state.backing_path, state.chap_username)

    def exports(self) -> dict[str, ExportState]:
        with self._lock:
            return {vid: dataclasses.replace(state, sessions=self._sessions.get(vid, frozenset()))
                    for vid, state in self._exports.items()}

    def sessions(self, volume_id: str) -> frozenset[str]:
        with self._lock:
            return self._sessions.get(volume_id, frozenset())

    def accounts(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._accounts)

    def remove_account(self, username: str) -> None:
        with self._lock:
            self._record("remove_account", username)
            self._accounts.discard(username)
            for vid, state in list(self._exports.items()):
                if state.chap_username == username:
                    self._exports[vid] = dataclasses.replace(state, chap_username=None)

    # -- what happens behind the driver's back (tests) ----------------------------

    def add_account(self, username: str) -> None:
        """An account someone made with tgtadm."""
        with self._lock:
            self._accounts.add(username)

    def set_sessions(self, volume_id: str, initiators: frozenset[str]) -> None:
        """Who is logged in to the volume's target now."""
        with self._lock:
            self._sessions[volume_id] = initiators

    def change_export(self, volume_id: str, **values: object) -> None:
        """Change what the target holds for an export (``initiators``,
        ``backing_path``, ``chap_username``), as a hand-run tgtadm would."""
        with self._lock:
            self._exports[volume_id] = dataclasses.replace(self._exports[volume_id],
                                                           **values)  # type: ignore[arg-type]

    def lose_everything(self) -> None:
        """What a tgtd restart does."""
        with self._lock:
            self._exports.clear()
            self._chap.clear()
            self._accounts.clear()
            self._sessions.clear()
