"""A server's state as Nova keeps it: ``vm_state`` (what the server is) and
``task_state`` (what is being done to it), one table over both.

An operation on a server starts with an event that sets its task (``stop``:
an active server with no task gets ``powering-off``) and ends with one that
clears it (``stop_done``: stopped, no task; ``stop_fail``: no task).  Volume
attach and detach set no task, as in Nova; their events are guards: the
server must be in one of the listed vm_states with no task.  A delete takes
the server from whatever it is doing (the host runs operations on one
server one at a time, so the delete waits for the current one).
"""

from __future__ import annotations

from tether.states.machine import StateMachine, Transition, tr

BUILDING = "building"
ACTIVE = "active"
STOPPED = "stopped"
SHELVED = "shelved"
SHELVED_OFFLOADED = "shelved_offloaded"
ERROR = "error"
DELETED = "deleted"

VM_STATES = (BUILDING, ACTIVE, STOPPED, SHELVED, SHELVED_OFFLOADED, ERROR, DELETED)
SHELVED_STATES = frozenset({SHELVED, SHELVED_OFFLOADED})

SPAWNING = "spawning"
DELETING = "deleting"
POWERING_OFF = "powering-off"
POWERING_ON = "powering-on"
SHELVING = "shelving"
SHELVING_OFFLOADING = "shelving_offloading"
UNSHELVING = "unshelving"

TASK_STATES = (None, SPAWNING, DELETING, POWERING_OFF, POWERING_ON, SHELVING,
               SHELVING_OFFLOADING, UNSHELVING)

_LIVE = [s for s in VM_STATES if s != DELETED]
_VOLUME_OPS = [ACTIVE, STOPPED, SHELVED, SHELVED_OFFLOADED]
_IDLE = [None]


def _task(event: str, vm: list[str], task: str, done: str | None,
          fail: str | None = None) -> list[Transition]:
    """``event`` sets ``task`` on an idle server in ``vm``; ``<event>_done``
    ends it in vm_state ``done`` (unchanged if None), ``<event>_fail`` in
    ``fail`` (unchanged if None); both clear the task."""
    done_to: dict[str, str | None] = {"task_state": None}
    fail_to: dict[str, str | None] = {"task_state": None}
    if done is not None:
        done_to["vm_state"] = done
    if fail is not None:
        fail_to["vm_state"] = fail
    running = {"vm_state": _LIVE, "task_state": [task]}
    return [tr(event, {"vm_state": vm, "task_state": _IDLE}, {"task_state": task}),
            tr(f"{event}_done", running, done_to),
            tr(f"{event}_fail", running, fail_to)]


MACHINE = StateMachine("Server", {"vm_state": VM_STATES, "task_state": TASK_STATES}, [
    # a server is created building/spawning
    tr("build_done", {"vm_state": [BUILDING], "task_state": [SPAWNING]},
       {"vm_state": ACTIVE, "task_state": None}),
    tr("build_fail", {"vm_state": [BUILDING], "task_state": [SPAWNING]},
       {"vm_state": ERROR, "task_state": None}),
    *_task("stop", [ACTIVE, ERROR], POWERING_OFF, STOPPED),
    *_task("start", [STOPPED], POWERING_ON, ACTIVE),
    *_task("shelve", [ACTIVE, STOPPED], SHELVING, SHELVED, ERROR),
    *_task("shelve_offload", [SHELVED], SHELVING_OFFLOADING,
           SHELVED_OFFLOADED, ERROR),
    *_task("unshelve", [SHELVED, SHELVED_OFFLOADED], UNSHELVING,
           ACTIVE, ERROR),
    # shelve with [compute] shelved_offload_time = 0 goes straight on to offload
    tr("shelve_done_offloading", {"vm_state": _LIVE, "task_state": [SHELVING]},
       {"vm_state": SHELVED, "task_state": SHELVING_OFFLOADING}),
    tr("delete", {"vm_state": _LIVE, "task_state": [t for t in TASK_STATES if t != DELETING]},
       {"task_state": DELETING}),
    tr("delete_done", {"vm_state": _LIVE, "task_state": [DELETING]},
       {"vm_state": DELETED, "task_state": None}),
    tr("delete_fail", {"vm_state": _LIVE, "task_state": [DELETING]},
       {"vm_state": ERROR, "task_state": None}),
    # guards: volume operations change no state, as in Nova
    tr("attach_volume", {"vm_state": _VOLUME_OPS, "task_state": _IDLE}),
    tr("detach_volume", {"vm_state": _VOLUME_OPS, "task_state": _IDLE}),
])

# Nova's power_state numbers, shown as OS-EXT-STS:power_state
POWER_NOSTATE, POWER_RUNNING, POWER_PAUSED, POWER_SHUTDOWN, POWER_CRASHED = 0, 1, 3, 4, 6
