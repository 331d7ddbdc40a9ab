"""An operation (instance action) and its steps: a step is started, then
finished with a result; an action is finished when its last step is, with
the message of the step that failed."""

from __future__ import annotations

from tether.states.machine import StateMachine, t

RUNNING = "running"
SUCCESS = "Success"
ERROR = "Error"

STATES = (RUNNING, SUCCESS, ERROR)

MACHINE = StateMachine("Operation step", STATES, [
    t("finish", [RUNNING], SUCCESS),
    t("fail", [RUNNING], ERROR),
])
