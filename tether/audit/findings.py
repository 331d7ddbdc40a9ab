"""What an audit finds, and how it is shown.

A :class:`Finding` is one line of the report: a drift (the database and the
world disagree), or an operation in progress (they may disagree for a
moment, and that is not drift).  A drift either names the repair
``--repair`` does (``fix``), or says why it is left and what to do
(``advice``), never both.  With ``--repair`` each drift gets an
:class:`Outcome`.  Nothing here holds a secret: findings name volumes,
servers, accounts and initiators, never a CHAP password.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

State = Literal["drift", "in-progress"]
Result = Literal["repaired", "left", "gone"]

LABELS: dict[str, str] = {"drift": "DRIFT", "in-progress": "IN-PROGRESS", "repaired": "REPAIRED",
                          "left": "LEFT", "gone": "GONE"}


@dataclass(frozen=True)
class Finding:
    kind: str  # e.g. "stray-domain"; docs/audit.md lists them all
    resource: str  # what it is about: "volume <id>", "domain tether-<uuid>" ...
    detail: str  # the disagreement, in words
    state: State = "drift"
    fix: str | None = None  # what --repair does about it
    advice: str | None = None  # why --repair leaves it, and what to do instead
    # the ids the repair acts on (a volume id; an attachment and its volume ...)
    target: tuple[str, ...] = field(default=(), compare=False)

    @property
    def key(self) -> tuple[str, str]:
        """The same drift seen by two audits has the same key."""
        return self.kind, self.resource

    @property
    def repairable(self) -> bool:
        return self.state == "drift" and self.fix is not None


def drift(kind: str, resource: str, detail: str, *, fix: str | None = None,
          advice: str | None = None, target: Sequence[str] = ()) -> Finding:
    if (fix is None) == (advice is None):
        raise ValueError(f"{kind}: a drift is either repaired (fix) or left (advice)")
    return Finding(kind, resource, detail, "drift", fix, advice, tuple(target))


def in_progress(kind: str, resource: str, detail: str) -> Finding:
    return Finding(kind, resource, detail, "in-progress")


@dataclass(frozen=True)
class Outcome:
    finding: Finding
    result: Result
    text: str  # what was done, or why it was left and what to do


@dataclass(frozen=True)
class Report:
    findings: list[Finding]
    outcomes: list[Outcome] | None = None  # with --repair
    after: list[Finding] | None = None  # the drifts of the audit after the repairs
    checked: dict[str, int] = field(default_factory=dict)  # what was looked at, by kind

    @property
    def drifts(self) -> list[Finding]:
        return [f for f in self.findings if f.state == "drift"]

    @property
    def remaining(self) -> list[Finding]:
        """The drifts there are now: after the repairs, or as found."""
        return self.after if self.after is not None else self.drifts

    @property
    def exit_code(self) -> int:
        return 1 if self.remaining else 0


def _line(label: str, kind: str, resource: str, text: str) -> str:
    return f"{LABELS[label]:<11}  {kind:<20}  {resource}: {text}"


def render_text(report: Report) -> list[str]:
    lines = []
    outcomes = {id(o.finding): o for o in report.outcomes or []}
    for f in report.findings:
        lines.append(_line(f.state, f.kind, f.resource, f.detail))
        outcome = outcomes.get(id(f))
        if outcome is not None:
            lines.append(_line(outcome.result, f.kind, f.resource, outcome.text))
    if report.after is not None:
        left = {o.finding.key for o in report.outcomes or [] if o.result == "left"}
        for f in report.after:
            if f.key not in left:  # not repaired after all, or new
                lines.append(_line("drift", f.kind, f.resource, f"after repair: {f.detail}"))
    lines.append(summary(report))
    return lines


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def summary(report: Report) -> str:
    drifts = report.drifts
    busy = len(report.findings) - len(drifts)
    looked = ", ".join(_count(n, k) for k, n in report.checked.items())
    parts = []
    if not drifts:
        parts.append(f"no drift ({looked})" if looked else "no drift")
    elif report.outcomes is None:
        fixable = sum(f.repairable for f in drifts)
        parts.append(f"{_count(len(drifts), 'drift')} ({fixable} repairable with --repair)")
    else:
        done = sum(o.result == "repaired" for o in report.outcomes)
        left = sum(o.result == "left" for o in report.outcomes)
        gone = sum(o.result == "gone" for o in report.outcomes)
        parts.append(f"{_count(len(drifts), 'drift')}: {done} repaired, {left} left"
                     + (f", {gone} gone meanwhile" if gone else ""))
    if busy:
        parts.append(f"{busy} in progress (not drift)")
    if report.after is not None and drifts:
        n = len(report.after)
        parts.append("after repair: clean" if not n else
                     f"after repair: {_count(n, 'drift')} remain{'s' if n == 1 else ''}")
    return "audit: " + "; ".join(parts)


def _finding_json(f: Finding) -> dict[str, Any]:
    out: dict[str, Any] = {"state": f.state, "kind": f.kind, "resource": f.resource,
                           "detail": f.detail}
    if f.state == "drift":
        out["repairable"] = f.fix is not None
        out["fix" if f.fix is not None else "advice"] = f.fix or f.advice
    return out


def render_json(report: Report) -> str:
    outcomes = {id(o.finding): o for o in report.outcomes or []}
    findings = []
    for f in report.findings:
        item = _finding_json(f)
        outcome = outcomes.get(id(f))
        if outcome is not None:
            item["outcome"] = {"result": outcome.result, "text": outcome.text}
        findings.append(item)
    doc: dict[str, Any] = {"clean": report.exit_code == 0, "exit_code": report.exit_code,
                           "findings": findings, "checked": report.checked,
                           "summary": summary(report)}
    if report.after is not None:
        doc["after_repair"] = [_finding_json(f) for f in report.after]
    return json.dumps(doc, indent=2)


def keys(findings: Iterable[Finding]) -> set[tuple[str, str]]:
    return {f.key for f in findings if f.state == "drift"}
