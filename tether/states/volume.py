"""Volume status (Cinder's ``status`` field) as a transition table."""

from __future__ import annotations

from collections.abc import Iterable

from tether.states.machine import StateMachine, t

CREATING = "creating"
AVAILABLE = "available"
RESERVED = "reserved"
ATTACHING = "attaching"
IN_USE = "in-use"
DETACHING = "detaching"
DELETING = "deleting"
ERROR = "error"
ERROR_DELETING = "error_deleting"
DELETED = "deleted"

STATES = (CREATING, AVAILABLE, RESERVED, ATTACHING, IN_USE, DETACHING, DELETING, ERROR,
          ERROR_DELETING, DELETED)
ATTACHED_STATES = frozenset({RESERVED, ATTACHING, IN_USE, DETACHING})
# a status some request is in the middle of; a volume found in one with
# nothing working on it (a crash) is settled by the volume service
TRANSITIONAL = frozenset({CREATING, RESERVED, ATTACHING, DETACHING, DELETING})

MACHINE = StateMachine("Volume", {"status": STATES}, [
    t("create_done", [CREATING], AVAILABLE),
    t("create_fail", [CREATING], ERROR),
    # new flow (attachments API)
    t("reserve", [AVAILABLE], RESERVED),
    t("reserve_multiattach", [AVAILABLE, IN_USE], RESERVED),
    # a server that already holds the volume takes a second attachment (shelve
    # offload swaps its attachment for a connector-less one)
    t("reserve_same_server", [IN_USE, RESERVED], RESERVED),
    t("attach_start", [RESERVED, ATTACHING], ATTACHING),
    t("attach_complete", [RESERVED, ATTACHING, IN_USE], IN_USE),
    # legacy flow (os-reserve / os-attach)
    t("legacy_reserve", [AVAILABLE], ATTACHING),
    t("legacy_reserve_multiattach", [AVAILABLE, IN_USE], ATTACHING),
    # detach
    t("begin_detaching", [IN_USE], DETACHING),
    t("roll_detaching", [DETACHING], IN_USE),
    # after an attachment goes (detach, unreserve, attachment delete) the status
    # is recomputed from the attachments that remain: see settled_status()
    t("settle", [RESERVED, ATTACHING, IN_USE, DETACHING], AVAILABLE, IN_USE, RESERVED,
      ATTACHING),
    # delete
    t("delete", [AVAILABLE, ERROR, ERROR_DELETING], DELETING),
    t("delete_done", [DELETING], DELETED),
    t("delete_fail", [DELETING], ERROR_DELETING),
    # os-reset_status (admin): from anything (a volume stuck creating
    # included), to any status a service is not working on
    t("reset", [s for s in STATES if s != DELETED],
      *[s for s in STATES if s not in (CREATING, DELETING, DELETED)]),
])

# what os-reset_status may set (admin only)
RESETTABLE = MACHINE.transition("reset").targets["status"]


def settled_status(remaining_attach_statuses: Iterable[str]) -> str:
    """The volume status that matches the attachments that remain."""
    remaining = set(remaining_attach_statuses)
    if "attached" in remaining:
        return IN_USE
    if "attaching" in remaining:
        return ATTACHING
    if remaining & {"reserved", "error_attaching"}:
        return RESERVED
    return AVAILABLE
