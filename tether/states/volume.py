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

STATES = (CREATING, AVAILABLE, RESERVED, ATTACHING, IN_USE, DETACHING, DELETING, ERROR,
          ERROR_DELETING)
ATTACHED_STATES = frozenset({RESERVED, ATTACHING, IN_USE, DETACHING})

MACHINE = StateMachine("Volume", STATES, [
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
    t("delete_fail", [DELETING], ERROR_DELETING),
])

# what os-reset_status may set (admin only, no table check beyond validity)
RESETTABLE = frozenset(STATES) - {CREATING, DELETING}


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
