from __future__ import annotations

import pytest

from tether.api.auth import AuthConfigError, NoAuth, check_bind
from tether.api.errors import ApiError

AUTH = NoAuth(admin_user="admin", service_token="s3cret-service", default_project="demo")


def _h(token: str | None) -> dict[str, str]:
    return {} if token is None else {"x-auth-token": token}


def test_user_project_token() -> None:
    ctx = AUTH.authenticate(_h("alice:p1"), "req-1")
    assert (ctx.user_id, ctx.project_id, ctx.is_admin, ctx.is_service) == (
        "alice", "p1", False, False)


def test_admin_user_is_admin() -> None:
    ctx = AUTH.authenticate(_h("admin:p1"), "req-1")
    assert ctx.is_admin and not ctx.is_service


def test_token_without_project_uses_default() -> None:
    assert AUTH.authenticate(_h("notused"), "r").project_id == "demo"


def test_service_token() -> None:
    ctx = AUTH.authenticate(_h("s3cret-service"), "r")
    assert ctx.is_service and ctx.privileged


@pytest.mark.parametrize("token", [None, "", "a b:c", "x:" + "y" * 300, "a:b/c", "\u00e9:p",
                                   "s3cret-servic\u00e9"])
def test_bad_tokens_are_401(token: str | None) -> None:
    with pytest.raises(ApiError) as err:
        AUTH.authenticate(_h(token), "r")
    assert err.value.status == 401


def test_token_never_in_repr() -> None:
    assert "s3cret-service" not in repr(AUTH.authenticate(_h("s3cret-service"), "r"))


@pytest.mark.parametrize(("strategy", "host", "ok"), [
    ("noauth", "127.0.0.1", True), ("noauth", "::1", True), ("noauth", "localhost", True),
    ("noauth", "0.0.0.0", False), ("noauth", "192.0.2.7", False), ("noauth", "example", False),
    ("local", "0.0.0.0", True), ("keystone", "192.0.2.7", True)])
def test_noauth_only_on_loopback(strategy: str, host: str, ok: bool) -> None:
    if ok:
        check_bind(strategy, host)
    else:
        with pytest.raises(AuthConfigError, match="not a loopback"):
            check_bind(strategy, host)


@pytest.mark.parametrize(("token", "roles", "admin"), [
    ("alice:p1", ("member", "reader"), False),
    ("admin:p1", ("admin", "member", "reader"), True),
    ("rita:p1:reader", ("reader",), False),
    ("bob:p1:member,reader", ("member", "reader"), False),
    ("boss:p1:admin", ("admin",), True),
    ("admin:p1:reader", ("reader",), False),  # the roles given win, even for admin
])
def test_token_roles(token: str, roles: tuple[str, ...], admin: bool) -> None:
    ctx = AUTH.authenticate(_h(token), "r")
    assert (ctx.roles, ctx.is_admin, ctx.is_service) == (roles, admin, False)


@pytest.mark.parametrize("token", ["eve:p1:service", "eve:p1:reader,service", "eve:p1:,",
                                   "eve:p1:a b", "eve:p1:r\u00e9ader"])
def test_bad_or_service_roles_are_401(token: str) -> None:
    with pytest.raises(ApiError) as err:
        AUTH.authenticate(_h(token), "r")
    assert err.value.status == 401
