"""Request validation: every JSON body and every query parameter a handler
reads is checked against a JSON schema (draft 2020-12) before the handler
runs, so a handler only ever sees well-typed input and nothing a client can
send reaches Python's ``int()``, ``getattr`` or ``re`` unchecked.

The schemas live in :mod:`tether.api.schemas` (one module per API); the
same objects are declared on the handler (``@validated``) and in the API's
operation table, so ``/openapi.json`` publishes exactly what is enforced.
Errors are 400s worded as Nova's and Cinder's ("Invalid input for
field/attribute size. Value: ². ...") naming the field; a body larger than
``[api] max_request_body_size`` is a 413 before it is parsed."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import falcon
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from tether.api import errors
from tether.api.versions import Version

DEFAULT_MAX_BODY = 114688  # oslo.middleware's sizelimit default
MARKER = "__tether_validation__"
Schema = dict[str, Any]
Responder = TypeVar("Responder", bound=Callable[..., None])

_INTEGER_RE = re.compile(r"[0-9]{1,18}", re.ASCII)
_TRUE = frozenset(("1", "t", "true", "on", "y", "yes"))
_FALSE = frozenset(("0", "f", "false", "off", "n", "no"))
_SHOWN = 100  # characters of a refused value quoted back in an error


def _validator(schema: Schema) -> Draft202012Validator:
    Draft202012Validator.check_schema(schema)  # a broken schema fails at import
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


@dataclass(frozen=True)
class Body:
    """A JSON body's schema, per microversion: ``variants`` are (first
    microversion, schema) in ascending order; a request gets the last one
    its microversion reaches."""

    variants: tuple[tuple[str, Schema], ...]
    _validators: tuple[Draft202012Validator, ...] = field(init=False, repr=False,
                                                          compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_validators",
                           tuple(_validator(s) for _, s in self.variants))

    @classmethod
    def of(cls, schema: Schema) -> Body:
        return cls((("1.0", schema),))  # every microversion

    @property
    def latest(self) -> Schema:
        return self.variants[-1][1]

    def validator(self, version: Version | None) -> Draft202012Validator:
        chosen = self._validators[0]
        for (since, _), validator in zip(self.variants, self._validators, strict=True):
            if version is None or version.at_least(since):
                chosen = validator
        return chosen

    def parse(self, req: falcon.Request) -> Any:
        data = read_json(req)
        error = best_match(self.validator(getattr(req.context, "version", None))
                           .iter_errors(data))
        if error is not None:
            raise errors.bad_request(message(error))
        return data


@dataclass(frozen=True)
class Query:
    """Query parameters a handler reads: name -> the schema of its value
    (``integer`` and ``boolean`` values are converted from their text
    first).  Parameters not named here are ignored, as Nova and Cinder do."""

    params: Mapping[str, Schema]
    _validators: Mapping[str, Draft202012Validator] = field(init=False, repr=False,
                                                            compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_validators",
                           {k: _validator(s) for k, s in self.params.items()})

    def parse(self, req: falcon.Request) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, schema in self.params.items():
            raw = req.get_param(name)
            if raw is None:
                continue
            value = _convert(name, raw, schema.get("type"))
            error = best_match(self._validators[name].iter_errors(value))
            if error is not None:
                raise errors.bad_request(
                    f"Invalid input for query parameters {name}. Value: {_short(raw)}. "
                    f"{_short(error.message, 300)}")
            out[name] = value
        return out


def _convert(name: str, raw: str, kind: Any) -> Any:
    if kind == "integer":
        if not _INTEGER_RE.fullmatch(raw):
            raise errors.bad_request(f"Invalid input for query parameters {name}. Value: "
                                     f"{_short(raw)}. Expected a non-negative integer.")
        return int(raw)
    if kind == "boolean":
        if raw == "":  # ?all_tenants alone: present means yes, as in Nova and Cinder
            return True
        if raw.lower() not in _TRUE | _FALSE:
            raise errors.bad_request(f"Invalid input for query parameters {name}. Value: "
                                     f"{_short(raw)}. Expected a boolean (true or false).")
        return raw.lower() in _TRUE
    return raw


def _short(value: Any, limit: int = _SHOWN) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


def message(error: ValidationError) -> str:
    """Nova's and Cinder's wording: the field (the innermost name on the path
    to it), the value refused and why."""
    path = [str(p) for p in error.absolute_path]
    reason = _short(error.message, 300)
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    if (not path and error.validator == "additionalProperties"
            and isinstance(error.instance, dict) and schema.get("maxProperties") == 1):
        # an action body (``schemas.actions``): name the action and the choice
        known = list(schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(known))
        return _short(f"There is no such action: {', '.join(unknown)}; expected one of "
                      f"{', '.join(known)}.", 500)
    if not path:
        return f"Invalid input for request body: {reason}"
    if error.validator in ("required", "additionalProperties", "minProperties"):
        return f"Invalid input for field/attribute {path[-1]}: {reason}"
    return (f"Invalid input for field/attribute {path[-1]}. Value: "
            f"{_short(error.instance)}. {reason}")


def read_json(req: falcon.Request) -> Any:
    """The body as JSON: 400 when absent or malformed, 413 beyond the limit
    (reading at most limit + 1 bytes, whatever Content-Length said)."""
    limit: int = getattr(req.context, "max_body", DEFAULT_MAX_BODY)
    raw = req.bounded_stream.read(limit + 1)
    if len(raw) > limit:
        raise too_large(limit)
    if not raw.strip():
        raise errors.bad_request("Missing request body: this request needs a JSON body.")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise errors.bad_request("Malformed request body: not valid JSON.") from None


def too_large(limit: int) -> errors.ApiError:
    return errors.ApiError(413, f"Request is too large: the body may have at most {limit} "
                                "bytes ([api] max_request_body_size).")


@dataclass(frozen=True)
class Validation:
    """What ``@validated`` put on a responder (read by the tests and the
    OpenAPI checks)."""

    body: Body | None
    query: Query | None


def validated(body: Body | None = None,
              query: Query | None = None) -> Callable[[Responder], Responder]:
    """Check the request against ``body`` and ``query`` before the responder
    runs; it reads them back with :func:`body_of` and :func:`query_of`."""

    def decorate(responder: Responder) -> Responder:
        @functools.wraps(responder)
        def checked(resource: Any, req: falcon.Request, resp: falcon.Response,
                    **params: Any) -> None:
            req.context.query = query.parse(req) if query is not None else {}
            req.context.body = body.parse(req) if body is not None else None
            responder(resource, req, resp, **params)

        setattr(checked, MARKER, Validation(body, query))
        return cast(Responder, checked)

    return decorate


def body_of(req: falcon.Request) -> Any:
    return req.context.body


def query_of(req: falcon.Request) -> dict[str, Any]:
    q: dict[str, Any] = req.context.query
    return q


def validation_of(responder: Any) -> Validation | None:
    found: Validation | None = getattr(responder, MARKER, None)
    return found
