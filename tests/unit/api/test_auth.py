from __future__ import annotations

import pytest

from tether.api.auth import NoAuth
from tether.api.errors import ApiError

AUTH = NoAuth(admin_user="admin", service_token="s3cret-service", default_project="demo")


def test_user_project_token() -> None:
    ctx = AUTH.authenticate("alice:p1", "req-1")
    assert (ctx.user_id, ctx.project_id, ctx.is_admin, ctx.is_service) == (
        "alice", "p1", False, False)


def test_admin_user_is_admin() -> None:
    ctx = AUTH.authenticate("admin:p1", "req-1")
    assert ctx.is_admin and not ctx.is_service


def test_token_without_project_uses_default() -> None:
    assert AUTH.authenticate("notused", "r").project_id == "demo"


def test_service_token() -> None:
    ctx = AUTH.authenticate("s3cret-service", "r")
    assert ctx.is_service and ctx.privileged


@pytest.mark.parametrize("token", [None, "", "a b:c", "x:" + "y" * 300, "a:b/c"])
def test_bad_tokens_are_401(token: str | None) -> None:
    with pytest.raises(ApiError) as err:
        AUTH.authenticate(token, "r")
    assert err.value.status == 401


def test_token_never_in_repr() -> None:
    assert "s3cret-service" not in repr(AUTH.authenticate("s3cret-service", "r"))
