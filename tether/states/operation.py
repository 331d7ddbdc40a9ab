"""An operation (an instance action) and its steps.

The operation's ``status`` says who may work on it, which is what recovery
after a crash needs to know:

* ``api``: the API process is doing the steps that answer the caller (a
  reservation on block storage, ``begin_detaching``); ``owner`` is that
  process (its incarnation).
* ``queued``: handed to the server's host (the RPC cast); nobody has it yet.
* ``running``: the host's compute service runs it; ``owner`` is that service.
* ``succeeded`` / ``failed``: finished (``finish_time`` set; ``message``
  ``Error`` when it failed, as Nova shows it).

A step is started, then finished with a result.
"""

from __future__ import annotations

from tether.states.machine import StateMachine, t

API = "api"
QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"

STATUSES = (API, QUEUED, RUNNING, SUCCEEDED, FAILED)
UNFINISHED = frozenset({API, QUEUED, RUNNING})

MACHINE = StateMachine("Operation", {"status": STATUSES}, [
    t("queue", [API], QUEUED),
    # a host takes the operation: from the queue (its message), or from a
    # service that died while it ran it (recovery)
    t("claim", [QUEUED, RUNNING], RUNNING),
    # another API process takes over the API steps of one that died
    t("take_over", [API], API),
    # the cast could not be sent: the API takes the operation back to undo it
    t("unqueue", [QUEUED], API),
    t("succeed", [API, QUEUED, RUNNING], SUCCEEDED),
    t("fail", [API, QUEUED, RUNNING], FAILED),
])

# a step's result
STEP_RUNNING = "running"
SUCCESS = "Success"
ERROR = "Error"

STEP = StateMachine("Operation step", {"result": (STEP_RUNNING, SUCCESS, ERROR)}, [
    t("finish", [STEP_RUNNING], SUCCESS),
    t("fail", [STEP_RUNNING], ERROR),
])
