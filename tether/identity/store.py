"""The local identity's data: projects, users, role assignments, application
credentials and revoked tokens, in Tether's database (``tether.db.records``
gateways; hard deletes, names unique).

Everything that takes a right away -- a user or project deleted or disabled,
a role removed, a password changed -- grows the ``revision`` of the users
concerned (and of a project), in the same transaction: a token carries the
revisions it was issued under, so every token issued before stops validating
(:mod:`tether.identity.tokens`).
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import bindparam, delete, select, update

from tether.db import models
from tether.db.api import Database, Tx
from tether.db.prepared import Prepared
from tether.db.records import (
    APP_CREDENTIALS,
    PROJECTS,
    REVOKED_TOKENS,
    ROLE_ASSIGNMENTS,
    USERS,
    AppCredentialRecord,
    Duplicate,
    ProjectRecord,
    RoleAssignmentRecord,
    UserRecord,
    by,
)
from tether.exceptions import Conflict, InvalidInput, NotFound
from tether.identity.passwords import ScryptParams, hash_secret, verify_nothing, verify_secret

ROLES = ("reader", "member", "admin", "service")
# a role brings the ones it implies, as Keystone's default implied roles do
IMPLIED = {"admin": ("admin", "member", "reader"), "member": ("member", "reader"),
           "reader": ("reader",), "service": ("service",)}
_NAME_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,255}$")

_U, _P, _A, _C = USERS.columns, PROJECTS.columns, ROLE_ASSIGNMENTS.columns, APP_CREDENTIALS.columns
_USER_BY_NAME = Prepared(by(USERS, _U["name"] == bindparam("name")))
_PROJECT_BY_NAME = Prepared(by(PROJECTS, _P["name"] == bindparam("name")))
_ROLES_OF = Prepared(select(_A["role"]).where(_A["user_id"] == bindparam("user_id"),
                                              _A["project_id"] == bindparam("project_id")))
_STATE = Prepared(select(_U["revision"], _U["enabled"], _P["revision"], _P["enabled"])
                  .where(_U["id"] == bindparam("user_id"),
                         _P["id"] == bindparam("project_id")))
_REVOKED = Prepared(select(REVOKED_TOKENS.columns["id"]).where(
    REVOKED_TOKENS.columns["expires_at"] > bindparam("now")))


class IdentityNotFound(NotFound):
    pass


class IdentityConflict(Conflict):
    pass


@dataclass(frozen=True)
class TokenState:
    """What a token's validity depends on, read in one statement."""

    user_revision: int
    user_enabled: bool
    project_revision: int
    project_enabled: bool


def new_id() -> str:
    return uuid.uuid4().hex


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidInput(f"Invalid {kind} name {name!r}: 1 to 255 printable characters.")
    return name


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidInput(f"Unknown role {role!r}: one of {', '.join(ROLES)}.")
    return role


class IdentityStore:
    def __init__(self, db: Database, params: ScryptParams | None = None) -> None:
        self.db = db
        self.params = params or ScryptParams()

    # -- projects ---------------------------------------------------------
    def create_project(self, name: str, description: str | None = None) -> ProjectRecord:
        with self.db.begin() as c:
            return self._insert_project(c, _check_name("project", name), description)

    def _insert_project(self, c: Tx, name: str, description: str | None) -> ProjectRecord:
        try:
            return PROJECTS.insert(c, {"id": new_id(), "name": name,
                                       "description": description, "enabled": True,
                                       "revision": 0})
        except Duplicate as exc:
            raise IdentityConflict(f"A project named {name!r} already exists.") from exc

    def projects(self) -> list[ProjectRecord]:
        with self.db.begin() as c:
            return PROJECTS.all(c, by(PROJECTS, order=[_P["name"]]))

    def project(self, ref: str) -> ProjectRecord:
        """The project of id or name ``ref``."""
        with self.db.begin() as c:
            return self._project(c, ref)

    def _project(self, c: Tx, ref: str) -> ProjectRecord:
        found = PROJECTS.get(c, ref) or PROJECTS.first(c, _PROJECT_BY_NAME, {"name": ref})
        if found is None:
            raise IdentityNotFound(f"No project with id or name {ref!r}.")
        return found

    def delete_project(self, ref: str) -> ProjectRecord:
        """Delete a project, its role assignments and application credentials;
        the tokens of every user who had a role on it are revoked."""
        with self.db.begin() as c:
            project = self._project(c, ref)
            users = {a.user_id for a in ROLE_ASSIGNMENTS.all(
                c, by(ROLE_ASSIGNMENTS, _A["project_id"] == project.id))}
            c.execute(delete(APP_CREDENTIALS.table).where(_C["project_id"] == project.id))
            c.execute(delete(ROLE_ASSIGNMENTS.table).where(_A["project_id"] == project.id))
            c.execute(delete(PROJECTS.table).where(_P["id"] == project.id))
            self._bump(c, users)
        return project

    # -- users ------------------------------------------------------------
    def create_user(self, name: str, password: str) -> UserRecord:
        _check_name("user", name)
        if not password:
            raise InvalidInput("A user needs a non-empty password.")
        hashed = hash_secret(password, self.params)
        with self.db.begin() as c:
            return self._insert_user(c, name, hashed)

    def _insert_user(self, c: Tx, name: str, hashed: str) -> UserRecord:
        try:
            return USERS.insert(c, {"id": new_id(), "name": name, "password_hash": hashed,
                                    "enabled": True, "revision": 0})
        except Duplicate as exc:
            raise IdentityConflict(f"A user named {name!r} already exists.") from exc

    def create_account(self, name: str, password: str, project_name: str,
                       roles: tuple[str, ...]) -> UserRecord:
        """A user with ``roles`` on a project (made if missing), all in one
        transaction: a process dying on the way leaves nothing half made.
        IdentityConflict if the user exists (made meanwhile by another
        process, say)."""
        _check_name("user", name)
        for role in roles:
            _check_role(role)
        hashed = hash_secret(password, self.params)
        for _ in range(3):
            try:
                with self.db.begin() as c:
                    project = PROJECTS.first(c, _PROJECT_BY_NAME, {"name": project_name}) \
                        or PROJECTS.insert(c, {"id": new_id(), "name": project_name,
                                               "enabled": True, "revision": 0})
                    user = USERS.insert(c, {"id": new_id(), "name": name,
                                            "password_hash": hashed, "enabled": True,
                                            "revision": 0})
                    for role in roles:
                        ROLE_ASSIGNMENTS.insert(c, {"user_id": user.id,
                                                    "project_id": project.id, "role": role})
                    return user
            except Duplicate as exc:
                if exc.table == USERS.table.name:
                    raise IdentityConflict(f"A user named {name!r} already exists.") from exc
                # the project was made by another process meanwhile: again
        raise IdentityConflict(f"Could not create project {project_name!r} for {name!r}.")

    def users(self) -> list[UserRecord]:
        with self.db.begin() as c:
            return USERS.all(c, by(USERS, order=[_U["name"]]))

    def user(self, ref: str) -> UserRecord:
        with self.db.begin() as c:
            return self._user(c, ref)

    def _user(self, c: Tx, ref: str) -> UserRecord:
        found = USERS.get(c, ref) or USERS.first(c, _USER_BY_NAME, {"name": ref})
        if found is None:
            raise IdentityNotFound(f"No user with id or name {ref!r}.")
        return found

    def delete_user(self, ref: str) -> UserRecord:
        with self.db.begin() as c:
            user = self._user(c, ref)
            c.execute(delete(APP_CREDENTIALS.table).where(_C["user_id"] == user.id))
            c.execute(delete(ROLE_ASSIGNMENTS.table).where(_A["user_id"] == user.id))
            c.execute(delete(USERS.table).where(_U["id"] == user.id))
        return user

    def set_password(self, ref: str, password: str) -> UserRecord:
        """A new password; every token the user holds is revoked."""
        if not password:
            raise InvalidInput("A user needs a non-empty password.")
        hashed = hash_secret(password, self.params)
        with self.db.begin() as c:
            user = self._user(c, ref)
            USERS.update(c, user.id, {"password_hash": hashed})
            self._bump(c, {user.id})
        return user

    def _bump(self, c: Tx, user_ids: set[str]) -> None:
        for user_id in sorted(user_ids):
            c.execute(update(USERS.table).where(_U["id"] == user_id)
                      .values(revision=_U["revision"] + 1))

    # -- roles ------------------------------------------------------------
    def add_role(self, user_ref: str, project_ref: str, role: str) -> RoleAssignmentRecord:
        """Give ``role``; giving one the user already holds is a no-op."""
        _check_role(role)
        try:
            with self.db.begin() as c:
                user, project = self._user(c, user_ref), self._project(c, project_ref)
                existing = self._assignment(c, user.id, project.id, role)
                if existing is not None:
                    return existing
                return ROLE_ASSIGNMENTS.insert(c, {"user_id": user.id,
                                                   "project_id": project.id, "role": role})
        except Duplicate:  # given at the same moment by another process (rolled back)
            pass
        with self.db.begin() as c:
            again = self._assignment(c, user.id, project.id, role)
        assert again is not None
        return again

    def _assignment(self, c: Tx, user_id: str, project_id: str,
                    role: str) -> RoleAssignmentRecord | None:
        return ROLE_ASSIGNMENTS.first(c, by(
            ROLE_ASSIGNMENTS, _A["user_id"] == user_id, _A["project_id"] == project_id,
            _A["role"] == role))

    def remove_role(self, user_ref: str, project_ref: str, role: str) -> None:
        """Take ``role`` away; the user's tokens are revoked."""
        _check_role(role)
        with self.db.begin() as c:
            user, project = self._user(c, user_ref), self._project(c, project_ref)
            gone = c.execute(delete(ROLE_ASSIGNMENTS.table).where(
                _A["user_id"] == user.id, _A["project_id"] == project.id,
                _A["role"] == role)).rowcount
            if not gone:
                raise IdentityNotFound(f"User {user.name!r} has no role {role!r} on project "
                                       f"{project.name!r}.")
            self._bump(c, {user.id})

    def assignments(self, user_ref: str | None = None,
                    project_ref: str | None = None) -> list[RoleAssignmentRecord]:
        with self.db.begin() as c:
            conditions = []
            if user_ref is not None:
                conditions.append(_A["user_id"] == self._user(c, user_ref).id)
            if project_ref is not None:
                conditions.append(_A["project_id"] == self._project(c, project_ref).id)
            return ROLE_ASSIGNMENTS.all(c, by(ROLE_ASSIGNMENTS, *conditions,
                                              order=[_A["id"]]))

    def roles(self, user_id: str, project_id: str) -> tuple[str, ...]:
        """The user's roles on the project with the ones they imply, in a
        stable order (empty: no access)."""
        with self.db.begin() as c:
            held = {row[0] for row in _ROLES_OF.rows(c, {"user_id": user_id,
                                                          "project_id": project_id})}
        return expand(held)

    def projects_of(self, user_id: str) -> list[ProjectRecord]:
        with self.db.begin() as c:
            ids = {a.project_id for a in ROLE_ASSIGNMENTS.all(
                c, by(ROLE_ASSIGNMENTS, _A["user_id"] == user_id))}
            return [p for p in PROJECTS.all(c, by(PROJECTS, order=[_P["name"]]))
                    if p.id in ids]

    def token_state(self, user_id: str, project_id: str) -> TokenState | None:
        """The revisions a token of this user on this project must carry
        (None: the user or the project is gone)."""
        with self.db.begin() as c:
            row = _STATE.first(c, {"user_id": user_id, "project_id": project_id})
        if row is None:
            return None
        return TokenState(int(row[0]), bool(row[1]), int(row[2]), bool(row[3]))

    # -- authentication ---------------------------------------------------
    def check_password(self, user_name: str, password: str) -> UserRecord | None:
        """The user whose name and password these are, or None (as slow
        either way)."""
        with self.db.begin() as c:
            user = USERS.first(c, _USER_BY_NAME, {"name": user_name})
        if user is None:
            verify_nothing(password, self.params)
            return None
        if not verify_secret(password, user.password_hash) or not user.enabled:
            return None
        return user

    # -- application credentials -------------------------------------------
    def create_app_credential(self, user_ref: str, project_ref: str, name: str,
                              roles: list[str] | None = None,
                              expires_at: dt.datetime | None = None,
                              ) -> tuple[AppCredentialRecord, str]:
        """A new application credential and its secret (shown once, stored
        hashed).  ``roles``: a subset of the user's roles there (default all)."""
        _check_name("application credential", name)
        secret = secrets.token_urlsafe(32)
        hashed = hash_secret(secret, self.params)
        with self.db.begin() as c:
            user, project = self._user(c, user_ref), self._project(c, project_ref)
            held = set(expand([row[0] for row in _ROLES_OF.rows(
                c, {"user_id": user.id, "project_id": project.id})]))
            wanted = sorted(held) if roles is None else sorted({_check_role(r) for r in roles})
            if not wanted or not set(wanted) <= held:
                raise InvalidInput(
                    f"User {user.name!r} holds {sorted(held) or 'no role'} on project "
                    f"{project.name!r}; an application credential can only carry roles "
                    f"the user holds there.")
            try:
                cred = APP_CREDENTIALS.insert(c, {
                    "id": new_id(), "name": name, "user_id": user.id,
                    "project_id": project.id, "secret_hash": hashed, "roles": wanted,
                    "expires_at": expires_at})
            except Duplicate as exc:
                raise IdentityConflict(f"User {user.name!r} already has an application "
                                       f"credential named {name!r}.") from exc
        return cred, secret

    def app_credentials(self, user_ref: str | None = None) -> list[AppCredentialRecord]:
        with self.db.begin() as c:
            conditions = []
            if user_ref is not None:
                conditions.append(_C["user_id"] == self._user(c, user_ref).id)
            return APP_CREDENTIALS.all(c, by(APP_CREDENTIALS, *conditions,
                                             order=[_C["name"]]))

    def app_credential(self, cred_id: str) -> AppCredentialRecord | None:
        with self.db.begin() as c:
            return APP_CREDENTIALS.get(c, cred_id)

    def delete_app_credential(self, ref: str, user_ref: str | None = None) -> None:
        with self.db.begin() as c:
            cred = APP_CREDENTIALS.get(c, ref)
            if cred is None and user_ref is not None:
                user = self._user(c, user_ref)
                cred = APP_CREDENTIALS.first(c, by(APP_CREDENTIALS, _C["user_id"] == user.id,
                                                   _C["name"] == ref))
            if cred is None:
                raise IdentityNotFound(f"No application credential {ref!r}.")
            c.execute(delete(APP_CREDENTIALS.table).where(_C["id"] == cred.id))

    def check_app_credential(self, secret: str, cred_id: str | None = None,
                             name: str | None = None, user_name: str | None = None,
                             now: dt.datetime | None = None) -> AppCredentialRecord | None:
        """The application credential (by id, or by name and user name) whose
        secret this is, unexpired, or None."""
        with self.db.begin() as c:
            cred: AppCredentialRecord | None = None
            if cred_id is not None:
                cred = APP_CREDENTIALS.get(c, cred_id)
            elif name is not None and user_name is not None:
                user = USERS.first(c, _USER_BY_NAME, {"name": user_name})
                if user is not None:
                    cred = APP_CREDENTIALS.first(c, by(
                        APP_CREDENTIALS, _C["user_id"] == user.id, _C["name"] == name))
        if cred is None:
            verify_nothing(secret, self.params)
            return None
        if not verify_secret(secret, cred.secret_hash):
            return None
        if cred.expires_at is not None and cred.expires_at <= (now or models.utcnow()):
            return None
        return cred

    # -- revoked tokens -----------------------------------------------------
    def revoke_token(self, token_id: str, expires_at: dt.datetime) -> None:
        try:
            with self.db.begin() as c:
                if REVOKED_TOKENS.get(c, token_id) is None:
                    REVOKED_TOKENS.insert(c, {"id": token_id, "expires_at": expires_at})
        except Duplicate:
            pass  # revoked by another request at the same moment: rolled back, done
        with self.db.begin() as c:
            c.execute(delete(REVOKED_TOKENS.table).where(
                REVOKED_TOKENS.columns["expires_at"] <= models.utcnow()))

    def revoked_tokens(self) -> frozenset[str]:
        with self.db.begin() as c:
            return frozenset(row[0] for row in _REVOKED.rows(c, {"now": models.utcnow()}))


def expand(held: set[str] | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``held`` with the roles each implies, in the order of :data:`ROLES`."""
    have = {implied for role in held for implied in IMPLIED.get(role, ())}
    return tuple(r for r in ROLES if r in have)
