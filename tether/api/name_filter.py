"""``?name=`` on server lists: a regular expression, as in Nova, matched by
RE2 instead of Python's ``re``.

Python's backtracking engine takes exponential time on patterns such as
``(a|aa)+$`` and holds the GIL meanwhile, so one request could stall every
thread of the process (the other APIs, heartbeats, RPC).  RE2 matches in
time linear in the name and refuses, as an invalid pattern (400), what it
cannot do in linear time (backreferences, lookaround).  The pattern is also
capped in length and in the memory RE2 may use to compile it."""

from __future__ import annotations

from collections.abc import Callable

import re2

from tether.api import errors

MAX_PATTERN = 255
_MAX_MEM = 1 << 20  # bytes RE2 may use for one compiled pattern

NameMatcher = Callable[[str], bool]


def _options() -> re2.Options:
    opts = re2.Options()
    opts.log_errors = False  # an invalid pattern is the client's, not a server log line
    opts.max_mem = _MAX_MEM
    return opts


_OPTIONS = _options()


def compile_name_filter(pattern: str) -> NameMatcher:
    """A matcher that searches names for ``pattern`` (Nova's ``re.search``
    semantics); 400 for a pattern that is too long or that RE2 refuses."""
    if len(pattern) > MAX_PATTERN:
        raise errors.bad_request(f"Invalid input for query parameters name: the pattern has "
                                 f"{len(pattern)} characters, at most {MAX_PATTERN} are "
                                 "allowed.")
    try:
        compiled = re2.compile(pattern, _OPTIONS)
    except re2.error as e:
        reason = e.args[0].decode(errors="replace") if e.args and isinstance(
            e.args[0], bytes) else str(e)
        raise errors.bad_request(
            f"Invalid input for query parameters name: {pattern[:100]!r} is not a valid "
            f"regular expression ({reason}); escape special characters such as '[' with a "
            "backslash (backreferences and lookaround are not supported).") from None

    def matches(name: str) -> bool:
        return compiled.search(name) is not None

    return matches
