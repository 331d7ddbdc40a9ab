"""Volume attachment ``attach_status`` as a transition table."""

from __future__ import annotations

from tether.states.machine import StateMachine, t

RESERVED = "reserved"
ATTACHING = "attaching"
ATTACHED = "attached"
ERROR_ATTACHING = "error_attaching"
DETACHED = "detached"

STATES = (RESERVED, ATTACHING, ATTACHED, ERROR_ATTACHING, DETACHED)
LIVE_STATES = frozenset({RESERVED, ATTACHING, ATTACHED, ERROR_ATTACHING})

MACHINE = StateMachine("Attachment", STATES, [
    # update with a connector: the volume is exported to that initiator
    t("connect", [RESERVED, ATTACHING, ERROR_ATTACHING], ATTACHING),
    t("connect_fail", [RESERVED, ATTACHING], ERROR_ATTACHING),
    t("complete", [ATTACHING, RESERVED], ATTACHED),
    t("delete", [RESERVED, ATTACHING, ATTACHED, ERROR_ATTACHING], DETACHED),
])
