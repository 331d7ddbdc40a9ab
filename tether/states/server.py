"""Server ``vm_state`` as a transition table, and which states allow which
volume operations (Nova's ``check_instance_state`` lists)."""

from __future__ import annotations

from tether.states.machine import StateMachine, t

BUILDING = "building"
ACTIVE = "active"
STOPPED = "stopped"
SHELVED = "shelved"
SHELVED_OFFLOADED = "shelved_offloaded"
ERROR = "error"
DELETED = "deleted"

STATES = (BUILDING, ACTIVE, STOPPED, SHELVED, SHELVED_OFFLOADED, ERROR, DELETED)

MACHINE = StateMachine("Server", STATES, [
    t("build_done", [BUILDING], ACTIVE),
    t("build_fail", [BUILDING], ERROR),
    t("stop", [ACTIVE, ERROR], STOPPED),
    t("start", [STOPPED], ACTIVE),
    t("shelve", [ACTIVE, STOPPED], SHELVED),
    t("shelve_offload", [SHELVED], SHELVED_OFFLOADED),
    t("unshelve", [SHELVED, SHELVED_OFFLOADED], ACTIVE),
    t("delete", [BUILDING, ACTIVE, STOPPED, SHELVED, SHELVED_OFFLOADED, ERROR], DELETED),
    # volume operations do not change vm_state; these events only check it
    t("attach_volume", [ACTIVE, STOPPED, SHELVED, SHELVED_OFFLOADED], ACTIVE, STOPPED,
      SHELVED, SHELVED_OFFLOADED),
    t("detach_volume", [ACTIVE, STOPPED, SHELVED, SHELVED_OFFLOADED], ACTIVE, STOPPED,
      SHELVED, SHELVED_OFFLOADED),
])

SHELVED_STATES = frozenset({SHELVED, SHELVED_OFFLOADED})

# Nova's power_state numbers, shown as OS-EXT-STS:power_state
POWER_NOSTATE, POWER_RUNNING, POWER_PAUSED, POWER_SHUTDOWN, POWER_CRASHED = 0, 1, 3, 4, 6
