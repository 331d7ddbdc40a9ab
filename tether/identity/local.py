"""The local identity (``[api] auth_strategy = local``): who may have a token
(:class:`LocalIdentity`: password and application-credential
authentication, issue, validate, revoke) and the first start's accounts
(:func:`bootstrap`).

Files in the state dir, each created 0600 before its first byte:
``token.key`` (the signing key, ``[identity] token_key_file``),
``admin-password`` (the ``admin`` user's generated password) and
``service_password`` (the ``[service_user]``'s, unless configured).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from dataclasses import dataclass

from oslo_config import cfg

from tether import config, statedir
from tether.db.api import Database
from tether.db.records import ProjectRecord, UserRecord
from tether.exceptions import TetherError
from tether.identity.passwords import ScryptParams, verify_secret
from tether.identity.store import IdentityConflict, IdentityNotFound, IdentityStore, expand
from tether.identity.tokens import InvalidToken, TokenData, Tokens, new_key

LOG = logging.getLogger(__name__)

ADMIN_USER = "admin"
ADMIN_PROJECT = "admin"
ADMIN_PASSWORD_FILE = "admin-password"  # noqa: S105 - a file name
SERVICE_PASSWORD_FILE = "service_password"  # noqa: S105 - a file name


class AuthFailed(Exception):
    """Authentication refused (401); the message is safe to show."""


@dataclass(frozen=True)
class Issued:
    token: str
    data: TokenData


class LocalIdentity:
    def __init__(self, store: IdentityStore, tokens: Tokens) -> None:
        self.store = store
        self.tokens = tokens

    def password_token(self, user_name: str, password: str, project: str | None,
                       project_is_id: bool = False) -> Issued:
        """A token for ``user_name`` scoped to ``project`` (its name, or id);
        None: the user's only project, else refused (Tether has no unscoped
        tokens)."""
        user = self.store.check_password(user_name, password)
        if user is None:
            raise AuthFailed("The request you have made requires authentication.")
        return self._scoped(user, self._project_for(user, project, project_is_id))

    def _project_for(self, user: UserRecord, ref: str | None,
                     is_id: bool) -> ProjectRecord:
        if ref is None:
            mine = self.store.projects_of(user.id)
            if len(mine) != 1:
                raise AuthFailed("Tether issues project-scoped tokens only: name the "
                                 "project in auth.scope.project.")
            return mine[0]
        try:
            project = self.store.project(ref)
        except IdentityNotFound as exc:
            raise AuthFailed(f"Could not find project {ref!r}.") from exc
        if (project.id if is_id else project.name) != ref:
            raise AuthFailed(f"Could not find project {ref!r}.")
        return project

    def _scoped(self, user: UserRecord, project: ProjectRecord) -> Issued:
        roles = self.store.roles(user.id, project.id)
        state = self.store.token_state(user.id, project.id)
        if not roles or state is None or not state.project_enabled:
            raise AuthFailed(f"User {user.name!r} has no role on project "
                             f"{project.name!r}.")
        token, data = self.tokens.issue(user.id, user.name, project.id, project.name,
                                        roles, state)
        return Issued(token, data)

    def app_credential_token(self, secret: str, cred_id: str | None = None,
                             name: str | None = None,
                             user_name: str | None = None) -> Issued:
        cred = self.store.check_app_credential(secret, cred_id, name, user_name)
        if cred is None:
            raise AuthFailed("The request you have made requires authentication.")
        held = set(self.store.roles(cred.user_id, cred.project_id))
        roles = tuple(r for r in expand(cred.roles) if r in held)
        state = self.store.token_state(cred.user_id, cred.project_id)
        if not roles or state is None or not (state.user_enabled and state.project_enabled):
            raise AuthFailed("The application credential's user no longer holds its "
                             "roles on its project.")
        user = self.store.user(cred.user_id)
        project = self.store.project(cred.project_id)
        token, data = self.tokens.issue(user.id, user.name, project.id, project.name,
                                        roles, state, app_credential_id=cred.id)
        return Issued(token, data)

    def token_for(self, user_ref: str, project_ref: str) -> Issued:
        """A token without a password, for a caller that holds the database
        and the key already (``tether volume list`` on the host)."""
        return self._scoped(self.store.user(user_ref), self.store.project(project_ref))

    def validate(self, token: str) -> TokenData:
        return self.tokens.validate(token)

    def revoke(self, token: str) -> None:
        self.tokens.revoke(self.tokens.validate(token))


def scrypt_params(conf: cfg.ConfigOpts) -> ScryptParams:
    ident = conf.identity
    return ScryptParams(ident.scrypt_n, ident.scrypt_r, ident.scrypt_p)


def token_key(conf: cfg.ConfigOpts) -> bytes:
    """The signing key: read, or generated 0600 at first start (two processes
    starting at once agree on one)."""
    path = config.token_key_file(conf)
    if os.path.dirname(os.path.abspath(path)) == os.path.abspath(conf.state_dir):
        statedir.directory(conf.state_dir, statedir.state_dir_mode(conf))
    text = statedir.read_or_create(path, new_key()).strip()
    try:
        key = bytes.fromhex(text)
    except ValueError as exc:
        raise RuntimeError(f"{path} does not hold a hex key") from exc
    if len(key) < 16:
        raise RuntimeError(f"{path} holds a key shorter than 16 bytes")
    return key


def make(conf: cfg.ConfigOpts, db: Database) -> LocalIdentity:
    store = IdentityStore(db, scrypt_params(conf))
    tokens = Tokens(store, token_key(conf), conf.identity.token_expiration,
                    conf.identity.revocation_check_interval)
    return LocalIdentity(store, tokens)


class NoLocalIdentity(TetherError):
    """Client commands found no local admin to make a token for."""


def admin_token(conf: cfg.ConfigOpts) -> str:
    """A token of the bootstrap ``admin`` user on project ``admin``, made
    from the database and the key (client commands run on the host)."""
    from tether.db import migrate
    from tether.service import open_database

    try:
        db = open_database(conf, upgrade=False)
    except RuntimeError:  # not at the current schema: nothing has served from here
        pass
    else:
        try:
            if migrate.current(db) == migrate.head():
                return make(conf, db).token_for(ADMIN_USER, ADMIN_PROJECT).token
        except IdentityNotFound:
            pass
        finally:
            db.dispose()
    raise NoLocalIdentity(
        f"no local identity in {config.database_url(conf)} to make the admin's token "
        "from: is `tether serve` running with this --state-dir? (or give --token)")


def service_password(conf: cfg.ConfigOpts) -> str:
    """``[service_user] password``, or the one generated into the state dir."""
    configured: str | None = conf.service_user.password
    if configured:
        return configured
    path = os.path.join(statedir.directory(conf.state_dir, statedir.state_dir_mode(conf)),
                        SERVICE_PASSWORD_FILE)
    return statedir.read_or_create(path, secrets.token_urlsafe(24) + "\n").strip()


def bootstrap(conf: cfg.ConfigOpts, store: IdentityStore) -> None:
    """At first start: project ``admin`` with user ``admin`` (role admin, its
    password generated into ``<state_dir>/admin-password``) and the
    ``[service_user]`` with roles service and admin on its project.  Each
    account is made in one transaction (a crash leaves none or all of it);
    safe to run by two processes at once on one database: names are unique,
    the loser of an insert keeps the winner's account."""
    folder = statedir.directory(conf.state_dir, statedir.state_dir_mode(conf))
    if not _exists(store, ADMIN_USER):
        path = os.path.join(folder, ADMIN_PASSWORD_FILE)
        password = statedir.read_or_create(path, secrets.token_urlsafe(24) + "\n").strip()
        try:
            store.create_account(ADMIN_USER, password, ADMIN_PROJECT, ("admin",))
            LOG.info("local identity: user %s created; its password is in %s", ADMIN_USER,
                     path)
        except IdentityConflict:
            if not verify_secret(password, store.user(ADMIN_USER).password_hash):
                # made by a process of another host, with its own password file
                os.unlink(path)
                LOG.warning("local identity: user %s was created by another process; its "
                            "password is in that process's state dir", ADMIN_USER)
    su = conf.service_user
    if not _exists(store, su.username):
        # service: passes the CVE-2023-2088 checks; admin: sees every
        # project's volumes and servers, since Tether's services call the
        # other side with their own token alone (Nova adds the user's)
        with contextlib.suppress(IdentityConflict):  # made meanwhile elsewhere
            store.create_account(su.username, service_password(conf), su.project_name,
                                 ("service", "admin"))


def _exists(store: IdentityStore, user_name: str) -> bool:
    try:
        store.user(user_name)
    except IdentityNotFound:
        return False
    return True


__all__ = ["AuthFailed", "InvalidToken", "Issued", "LocalIdentity", "bootstrap", "make"]
