"""``tether user|project|role|application-credential``: the local identity's
accounts, managed on the database directly (as ``tether db`` and ``tether
secrets`` are), by whoever can read the configuration and the state dir.

A change that takes a right away (user deleted, role removed, password
changed) revokes the user's tokens; API processes notice within
``[identity] revocation_check_interval`` seconds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import os
import sys
from typing import Any

from tether.identity.store import ROLES, IdentityStore


def _store(conf: Any) -> IdentityStore:
    from tether.identity.local import scrypt_params
    from tether.service import open_database

    return IdentityStore(open_database(conf, upgrade=False), scrypt_params(conf))


def _password(args: argparse.Namespace) -> str:
    """From --password-file, $TETHER_NEW_PASSWORD, or asked twice on a terminal
    (never on the command line, where `ps` shows it)."""
    if args.password_file:
        with open(args.password_file, encoding="utf-8") as f:
            return f.read().rstrip("\n")
    env = os.environ.get("TETHER_NEW_PASSWORD")
    if env:
        return env
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Repeat: "):
        raise SystemExit("tether: the passwords differ")
    return first


def _show(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    for row in rows:
        print("  ".join(f"{k}={v}" for k, v in row.items()))


def cmd_user(conf: Any, args: argparse.Namespace) -> int:
    store = _store(conf)
    try:
        if args.action == "create":
            user = store.create_user(args.name, _password(args))
            if args.project:
                store.add_role(user.id, args.project, args.role)
            _show([{"id": user.id, "name": user.name}], args.json)
        elif args.action == "list":
            _show([{"id": u.id, "name": u.name, "enabled": u.enabled}
                   for u in store.users()], args.json)
        elif args.action == "delete":
            user = store.delete_user(args.name)
            print(f"user {user.name} ({user.id}) deleted; its tokens are revoked")
        else:
            user = store.set_password(args.name, _password(args))
            print(f"password of {user.name} changed; its tokens are revoked")
    finally:
        store.db.dispose()
    return 0


def cmd_project(conf: Any, args: argparse.Namespace) -> int:
    store = _store(conf)
    try:
        if args.action == "create":
            project = store.create_project(args.name, args.description)
            _show([{"id": project.id, "name": project.name}], args.json)
        elif args.action == "list":
            _show([{"id": p.id, "name": p.name, "enabled": p.enabled}
                   for p in store.projects()], args.json)
        else:
            project = store.delete_project(args.name)
            print(f"project {project.name} ({project.id}) deleted with its role "
                  "assignments; its volumes and servers are not touched")
    finally:
        store.db.dispose()
    return 0


def cmd_role(conf: Any, args: argparse.Namespace) -> int:
    store = _store(conf)
    try:
        if args.action == "add":
            store.add_role(args.user, args.project, args.role)
            print(f"{args.user} has role {args.role} on {args.project}")
        elif args.action == "remove":
            store.remove_role(args.user, args.project, args.role)
            print(f"{args.user} no longer has role {args.role} on {args.project}; its "
                  "tokens are revoked")
        else:
            users = {u.id: u.name for u in store.users()}
            projects = {p.id: p.name for p in store.projects()}
            _show([{"user": users[a.user_id], "project": projects[a.project_id],
                    "role": a.role} for a in store.assignments(args.user, args.project)],
                  args.json)
    finally:
        store.db.dispose()
    return 0


def cmd_app_credential(conf: Any, args: argparse.Namespace) -> int:
    store = _store(conf)
    try:
        if args.action == "create":
            expires = (dt.datetime.fromisoformat(args.expires) if args.expires else None)
            cred, secret = store.create_app_credential(
                args.user, args.project, args.name, args.role or None, expires)
            _show([{"id": cred.id, "name": cred.name, "roles": ",".join(cred.roles),
                    "secret": secret}], args.json)
            print("(the secret is shown once: it is stored hashed)", file=sys.stderr)
        elif args.action == "list":
            _show([{"id": c.id, "name": c.name, "user_id": c.user_id,
                    "project_id": c.project_id, "roles": ",".join(c.roles),
                    "expires_at": c.expires_at} for c in store.app_credentials(args.user)],
                  args.json)
        else:
            store.delete_app_credential(args.name, args.user)
            print(f"application credential {args.name} deleted")
    finally:
        store.db.dispose()
    return 0


def _leaf(parent: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    q: argparse.ArgumentParser = parent.add_parser(name, **kwargs)
    q.add_argument("--json", action="store_true", help="print JSON")
    return q


def add_parsers(sub: Any) -> None:
    """The four commands, on ``tether``'s subparsers."""

    def password_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--password-file", help="read the password from this file "
                       "(default: $TETHER_NEW_PASSWORD, else asked, else stdin)")

    sp = sub.add_parser("user", help="local identity users (on the database)")
    us = sp.add_subparsers(dest="action", required=True)
    c = _leaf(us, "create")
    c.add_argument("name")
    c.add_argument("--project", help="give the new user a role on this project")
    c.add_argument("--role", default="member", choices=ROLES)
    password_args(c)
    _leaf(us, "list")
    _leaf(us, "delete").add_argument("name", help="name or id")
    s = _leaf(us, "set-password")
    s.add_argument("name", help="name or id")
    password_args(s)
    sp.set_defaults(func=cmd_user)

    sp = sub.add_parser("project", help="local identity projects (on the database)")
    ps = sp.add_subparsers(dest="action", required=True)
    c = _leaf(ps, "create")
    c.add_argument("name")
    c.add_argument("--description")
    _leaf(ps, "list")
    _leaf(ps, "delete").add_argument("name", help="name or id")
    sp.set_defaults(func=cmd_project)

    sp = sub.add_parser("role", help="local identity role assignments (on the database)")
    rs = sp.add_subparsers(dest="action", required=True)
    for action in ("add", "remove"):
        r = _leaf(rs, action, help=f"role {action} --user U --project P ROLE")
        r.add_argument("role", choices=ROLES)
        r.add_argument("--user", required=True)
        r.add_argument("--project", required=True)
    r = _leaf(rs, "list")
    r.add_argument("--user")
    r.add_argument("--project")
    sp.set_defaults(func=cmd_role)

    sp = sub.add_parser("application-credential",
                        help="local identity application credentials (on the database)")
    acs = sp.add_subparsers(dest="action", required=True)
    c = _leaf(acs, "create")
    c.add_argument("name")
    c.add_argument("--user", required=True)
    c.add_argument("--project", required=True)
    c.add_argument("--role", action="append", choices=ROLES,
                   help="a role it carries (repeatable; default every role of the user "
                        "on the project)")
    c.add_argument("--expires", help="ISO date and time (UTC) it stops working")
    _leaf(acs, "list").add_argument("--user")
    d = _leaf(acs, "delete")
    d.add_argument("name", help="id, or name with --user")
    d.add_argument("--user")
    sp.set_defaults(func=cmd_app_credential)
