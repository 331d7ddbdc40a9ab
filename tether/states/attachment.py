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

MACHINE = StateMachine("Attachment", {"attach_status": STATES}, [
    # update with a connector: the volume is exported to that initiator
    t("connect", [RESERVED, ATTACHING, ERROR_ATTACHING], ATTACHING),
    # the target refused the export an update asked for: back to what it was
    t("connect_revert", [ATTACHING], RESERVED, ATTACHING, ERROR_ATTACHING),
    # complete again is a no-op (a resumed attach completes what it completed)
    t("complete", [ATTACHING, RESERVED, ATTACHED], ATTACHED),
    t("delete", [RESERVED, ATTACHING, ATTACHED, ERROR_ATTACHING], DETACHED),
    # the target refused the change a delete asked for: the attachment is back
    t("undelete", [DETACHED], RESERVED, ATTACHING, ATTACHED, ERROR_ATTACHING),
    # legacy os-attach on a connection os-initialize_connection made
    t("legacy_attach", [RESERVED, ATTACHING], ATTACHED),
])
