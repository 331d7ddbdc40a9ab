"""``tether``: run the services, manage the database, and drive the REST APIs.

Processes: ``tether serve`` (embedded: everything in one process) and
``tether service api|volume`` (distributed).  Client commands talk to the
REST APIs only, like any OpenStack client would.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Sequence
from typing import Any

# oslo.messaging imports oslo.service, which imports eventlet: its deprecation
# notice is about that library, not anything an operator can act on
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(oslo_|eventlet|futurist)")
# dnspython, imported by eventlet, touches cryptography's DSA types at import time
warnings.filterwarnings("ignore", message="DSA is deprecated")

from tether import config  # noqa: E402 - after the warning filters above

LOG = logging.getLogger("tether")


class _FileAndStderr(logging.FileHandler):
    """The log file and stderr, each record formatted once for both (two
    handlers format it twice: a third of the logging's cost per line)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
            if self.stream is None:  # closed by close(): reopen, as FileHandler does
                self.stream = self._open()
            # (a failed command's traceback: the file only, its one line is on stderr)
            streams = (self.stream,) if getattr(record, "file_only", False) else (
                self.stream, sys.stderr)
            for stream in streams:
                stream.write(line)
                stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def setup_logging(conf: Any, to_stderr: bool) -> None:
    """INFO (DEBUG with ``debug``) to the log file, and to stderr too."""
    level = logging.DEBUG if conf.debug else logging.INFO
    fmt = "%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"
    from tether import statedir

    tightened: list[str] = []
    # 0600 before the first line is written (FileHandler keeps an existing file's mode)
    log_file = statedir.log_file(conf, tightened.append)
    handler = _FileAndStderr(log_file) if to_stderr else logging.FileHandler(log_file)
    logging.basicConfig(level=level, format=fmt, handlers=[handler], force=True)
    for noisy in ("oslo_messaging", "stevedore", "waitress", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # requests waiting for a worker thread are normal under a burst (50 at
    # once against [api] threads = 8); not a warning per request
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    for message in tightened:
        LOG.warning("%s", message)
    statedir.state_dir(conf)


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


def cmd_serve(conf: Any, args: argparse.Namespace) -> int:
    from tether.service import Embedded

    setup_logging(conf, to_stderr=True)
    app = Embedded(conf)
    app.start()
    print(f"tether serve: block storage on http://{conf.api.bind_host}:"
          f"{app.api.servers[0].port}/v3 (state dir {conf.state_dir})", flush=True)
    if app.api.identity is not None:
        password_file = os.path.join(conf.state_dir, "admin-password")
        where = (f" (user admin, password in {password_file})"
                 if os.path.exists(password_file) else "")
        print(f"tether serve: identity on {config.identity_endpoint(conf)}{where}",
              flush=True)
    try:
        _wait_for_signal()
    finally:
        app.stop()
    return 0


def cmd_service(conf: Any, args: argparse.Namespace) -> int:
    from tether import service
    from tether.rpc import Rpc

    setup_logging(conf, to_stderr=True)
    db = service.open_database(conf, upgrade=False)
    rpc = Rpc(conf)
    svc: service.ApiService | service.VolumeService | service.ComputeService
    if args.name == "api":
        svc = service.ApiService(conf, db, rpc)
    elif args.name == "volume":
        svc = service.VolumeService(conf, db, rpc)
    else:
        svc = service.ComputeService(conf, db, rpc)
    svc.start()
    try:
        _wait_for_signal()
    finally:
        svc.stop()
        rpc.stop()
    return 0


def cmd_db(conf: Any, args: argparse.Namespace) -> int:
    from tether import statedir
    from tether.db import migrate
    from tether.db.api import Database

    statedir.state_dir(conf)
    statedir.database_files(config.database_url(conf))
    db = Database(config.database_url(conf))
    if args.action == "upgrade":
        migrate.upgrade(db)
    print(f"database at revision {migrate.current(db)} (head {migrate.head()})")
    return 0


def cmd_secrets(conf: Any, args: argparse.Namespace) -> int:
    """``generate-key`` prints a new key; ``rotate-key`` puts a new key first
    in the key file, seals every CHAP secret with it, then drops the old
    keys (volume services stopped: docs/security.md)."""
    from tether.volume import secret_box
    from tether.volume.repository import VolumeRepository

    if args.action == "generate-key":
        print(secret_box.new_key())
        return 0
    from tether.service import open_database

    setup_logging(conf, to_stderr=False)
    db = open_database(conf, upgrade=False)
    try:
        repo = VolumeRepository(db)
        old = secret_box.prepare(conf, repo)  # the current keys open every secret
        if conf.volume.secret_key:  # "new,old" configured: seal everything with new
            resealed, _ = secret_box.rotate(conf, repo)
            print(f"{resealed} CHAP secret(s) sealed with the first key of [volume] "
                  "secret_key: the others can go now")
            return 0
        path = config.secret_key_file(conf)
        with open(path, encoding="ascii") as f:
            keys = secret_box.parse_keys(f.read())
        new = secret_box.new_key()
        # a crash from here on leaves a file whose keys open every secret:
        # the new one first, then the old ones until every secret is resealed
        secret_box.key_file_with(path, [new, *keys])
        resealed, kept = secret_box.rotate(conf, repo)
        secret_box.key_file_with(path, [new])
        LOG.warning("secrets: key of %s rotated, %d CHAP secret(s) sealed again", old.source,
                    resealed)
        print(f"{path}: new key; {resealed} CHAP secret(s) sealed with it"
              + (f", {kept} changed meanwhile" if kept else ""))
    finally:
        db.dispose()
    return 0


def cmd_config(conf: Any, args: argparse.Namespace) -> int:
    for group, opts in config.list_opts():
        print(f"[{group or 'DEFAULT'}]")
        for opt in opts:
            print(f"# {opt.help or ''}".rstrip())
            print(f"#{opt.dest} = {'' if opt.default is None else opt.default}\n")
    return 0


def cmd_policy(conf: Any, args: argparse.Namespace) -> int:
    from tether.policies import doc

    if args.action == "generate":
        text = doc.sample_yaml()
    elif args.action == "doc":
        text = doc.document(args.tests)
    else:
        problem = doc.check(args.output, args.tests)
        if problem is not None:
            print(f"tether: {problem}", file=sys.stderr)
            return 1
        print(f"{args.output} is current")
        return 0
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with open(args.output, "w") as f:  # a document of the repository: 0644 is right
            f.write(text)
    return 0


def _token(conf: Any, args: argparse.Namespace) -> str:
    """The client commands' token: --token, else the local admin's, else noauth's."""
    if args.token:
        return str(args.token)
    if conf.api.auth_strategy == "local":
        from tether.identity.local import admin_token

        return admin_token(conf)
    return "admin:admin"


def cmd_volume(conf: Any, args: argparse.Namespace) -> int:
    from tether.client import ApiClient

    with ApiClient.from_conf(conf, _token(conf, args)) as client:
        return _volume_command(client, args)


def _volume_command(client: Any, args: argparse.Namespace) -> int:
    if args.action == "create":
        vol = client.create_volume(args.size, args.name, multiattach=args.multiattach)
        if args.wait:
            vol = client.wait_volume(vol["id"], {"available", "error"})
        _print(vol, args.json)
    elif args.action == "list":
        rows = client.list_volumes()
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print(f"{'ID':36}  {'NAME':20}  {'STATUS':10}  SIZE  ATTACHED TO")
            for v in rows:
                to = ",".join(a["server_id"] or a["host_name"] or "?" for a in v["attachments"])
                print(f"{v['id']:36}  {(v['name'] or '')[:20]:20}  {v['status']:10}  "
                      f"{v['size']:4}  {to}")
    elif args.action == "show":
        _print(client.get_volume(client.find_volume(args.volume)), args.json)
    elif args.action == "delete":
        client.delete_volume(client.find_volume(args.volume))
    return 0


def _print(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, indent=2))
        return
    width = max(len(k) for k in data)
    for key in sorted(data):
        value = data[key]
        shown = json.dumps(value) if isinstance(value, dict | list) else value
        print(f"{key:{width}}  {shown}")


def cmd_server(conf: Any, args: argparse.Namespace) -> int:
    from tether.client import ApiClient, ComputeClient

    token = _token(conf, args)
    with ComputeClient.from_conf(conf, token) as nova, \
            ApiClient.from_conf(conf, token) as cinder:
        return _server_command(nova, cinder, args)


def _server_command(nova: Any, cinder: Any, args: argparse.Namespace) -> int:
    from tether.waterfall import render

    if args.action == "create":
        srv = nova.create_server(args.name, args.flavor)
        if args.wait:
            srv = nova.wait_server(srv["id"], {"ACTIVE", "ERROR"})
        _print(srv, args.json)
    elif args.action == "list":
        servers = nova.list_servers()  # (before the header: an error is the only line)
        print(f"{'ID':36}  {'NAME':20}  {'STATUS':8}  VOLUMES")
        for s in servers:
            vols = ",".join(v["id"] for v in s["os-extended-volumes:volumes_attached"])
            print(f"{s['id']:36}  {s['name'][:20]:20}  {s['status']:8}  {vols}")
    elif args.action == "show":
        _print(nova.get_server(nova.find_server(args.server)), args.json)
    elif args.action == "delete":
        sid = nova.find_server(args.server)
        nova.delete_server(sid)
        if args.wait:
            nova.wait_server_gone(sid)
    elif args.action in ("add", "remove"):
        sid, vid = nova.find_server(args.server), cinder.find_volume(args.volume)
        if args.action == "add":
            _print(nova.attach(sid, vid, args.device), args.json)
            if args.wait:
                cinder.wait_volume(vid, {"in-use", "available", "error"}, timeout=300)
            return 0
        request_id = nova.detach(sid, vid)
        if not args.wait:
            print(f"detach requested ({request_id})")
            return 0
        shown: set[str] = set()

        def progress(act: dict[str, Any]) -> None:
            for e in act.get("events", []):
                key = e["event"] + ("done" if e["finish_time"] else "")
                if key not in shown:
                    shown.add(key)
                    state = e["result"] or "..."
                    print(f"  {e['event']:32} {state}", flush=True)

        act = nova.wait_action(sid, request_id, progress=progress)
        vol = cinder.get_volume(vid)
        print(f"detach {act.get('message') or 'Success'}: volume {vol['status']}")
        return 0 if not act.get("message") else 1
    elif args.action == "event":
        sid = nova.find_server(args.server)
        if args.request_id is None:
            actions = nova.actions(sid)
            print(f"{'REQUEST ID':44}  {'ACTION':14}  {'START':26}  RESULT")
            for a in actions:
                result = a.get("message") or ("Success" if a.get("finish_time") else "running")
                print(f"{a['request_id']:44}  {a['action']:14}  {a['start_time']:26}  "
                      f"{result}")
        else:
            print("\n".join(render(nova.action(sid, args.request_id))))
    return 0


def cmd_image(conf: Any, args: argparse.Namespace) -> int:
    if args.action in ("list", "show"):
        from tether.client import ImageClient

        with ImageClient.from_conf(conf, _token(conf, args)) as glance:
            if args.action == "show":
                _print(glance.get_image(glance.find_image(args.image)), args.json)
                return 0
            rows = glance.list_images()
            if args.json:
                print(json.dumps(rows, indent=2))
                return 0
            print(f"{'ID':36}  {'NAME':40}  {'FORMAT':6}  {'STATUS':8}  SIZE")
            for i in rows:
                print(f"{i['id']:36}  {(i['name'] or '')[:40]:40}  {i['disk_format'] or '':6}  "
                      f"{i['status']:8}  {i['size'] if i['size'] is not None else '-'}")
        return 0
    return _image_local(conf, args)


def _image_local(conf: Any, args: argparse.Namespace) -> int:
    """``import`` and ``build-tiny``: the operator registers images on this host
    (the database and the images directory), as the image API is read-only."""
    import time

    from tether.db.api import Database
    from tether.executor import ProcessRunner
    from tether.image import tiny
    from tether.image.registry import ImageRegistry
    from tether.service import open_database

    db: Database = open_database(conf, upgrade=True)
    registry = ImageRegistry(db, config.images_dir(conf))
    try:
        if args.action == "import":
            props = dict(args.property)
            image = registry.import_file(args.file, args.name or os.path.basename(args.file),
                                         ProcessRunner(), props)
            _print({"id": image.id, "name": image.name, "disk_format": image.disk_format,
                    "size": image.size}, args.json)
            return 0
        started = time.perf_counter()
        built = tiny.TinyBuilder(config.image_cache_dir(conf), ProcessRunner()).build()
        image, new = tiny.register(registry, built)
        took = time.perf_counter() - started
        _print({"id": image.id, "name": image.name, "kernel_id": image.properties["kernel_id"],
                "ramdisk_id": image.properties["ramdisk_id"], "built_from": ", ".join(
                    built.packages), "registered": "now" if new else "already",
                "seconds": round(took, 1)}, args.json)
        return 0
    finally:
        db.dispose()


def cmd_audit(conf: Any, args: argparse.Namespace) -> int:
    from tether.audit import command

    if os.path.isdir(conf.state_dir):  # (a wrong --state-dir is not created)
        setup_logging(conf, to_stderr=False)  # repairs are logged with the services'
    return command(conf, repair=args.repair, fmt=args.format, debug=args.debug)


def cmd_demo(conf: Any, args: argparse.Namespace) -> int:
    from tether.demo import run

    return run(conf, args)


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    return key, value


def build_parser() -> argparse.ArgumentParser:  # noqa: PLR0915 - one flat table of commands
    p = argparse.ArgumentParser(prog="tether", description=__doc__.splitlines()[0])
    p.add_argument("--config-file", help=f"INI file (default {config.DEFAULT_CONFIG_FILE} "
                                         "if it exists)")
    p.add_argument("--state-dir", help=f"state directory (default {config.DEFAULT_STATE_DIR})")
    p.add_argument("--debug", action="store_true",
                   help="a failed command's traceback (on stderr, after its one line)")
    p.add_argument("--token", default=os.environ.get("TETHER_TOKEN"),
                   help="X-Auth-Token for client commands (env TETHER_TOKEN; default: "
                        "local: a token of the admin user made from the database, "
                        "noauth: admin:admin)")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("serve", help="run everything in one process (embedded mode)").set_defaults(
        func=cmd_serve)
    sp = sub.add_parser("service", help="run one service (distributed mode)")
    sp.add_argument("name", choices=["api", "volume", "compute"])
    sp.set_defaults(func=cmd_service)

    sp = sub.add_parser("db", help="database schema")
    sp.add_argument("action", choices=["upgrade", "version"])
    sp.set_defaults(func=cmd_db)

    sub.add_parser("config", help="print a sample tether.conf").set_defaults(func=cmd_config)

    sp = sub.add_parser("secrets", help="the key that seals CHAP secrets in the database")
    sp.add_argument("action", choices=["generate-key", "rotate-key"],
                    help="generate-key: print a new key (for [volume] secret_key); "
                         "rotate-key: seal every secret with a new key in the key file "
                         "(stop the volume services first)")
    sp.set_defaults(func=cmd_secrets)

    sp = sub.add_parser("policy", help="the API policy: sample file, docs/policy.md")
    ps = sp.add_subparsers(dest="action", required=True)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for action, what, out in (
            ("generate", "print every default rule as a sample policy.yaml", "-"),
            ("doc", "write docs/policy.md (endpoints, rules, check strings, tests)",
             os.path.join(repo, "docs", "policy.md")),
            ("check", "fail unless docs/policy.md is current",
             os.path.join(repo, "docs", "policy.md"))):
        q = ps.add_parser(action, help=what)
        q.add_argument("--output", default=out, help=f"file (default {out})")
        q.add_argument("--tests", default=os.path.join(repo, "tests"),
                       help="the test tree searched for each rule's tests")
    sp.set_defaults(func=cmd_policy)

    sp = sub.add_parser("volume", help="volumes (through the Block Storage API)")
    vs = sp.add_subparsers(dest="action", required=True)
    c = vs.add_parser("create")
    c.add_argument("--size", type=int, required=True, help="GiB")
    c.add_argument("--multiattach", action="store_true")
    c.add_argument("--no-wait", dest="wait", action="store_false")
    c.add_argument("name", nargs="?")
    vs.add_parser("list")
    for action in ("show", "delete"):
        vs.add_parser(action).add_argument("volume", help="id or name")
    for q in vs.choices.values():
        q.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_volume)

    sp = sub.add_parser("server", help="servers and their volumes (through the Compute API)")
    ss = sp.add_subparsers(dest="action", required=True)
    c = ss.add_parser("create")
    c.add_argument("name")
    c.add_argument("--flavor", default="1")
    c.add_argument("--no-wait", dest="wait", action="store_false")
    ss.add_parser("list")
    ss.add_parser("show").add_argument("server", help="id or name")
    d = ss.add_parser("delete")
    d.add_argument("server", help="id or name")
    d.add_argument("--no-wait", dest="wait", action="store_false")
    for verb in ("add", "remove"):
        v = ss.add_parser(verb, help=f"server {verb} volume SERVER VOLUME")
        v.add_argument("what", choices=["volume"])
        v.add_argument("server")
        v.add_argument("volume")
        v.add_argument("--no-wait", dest="wait", action="store_false")
        if verb == "add":
            v.add_argument("--device", help="/dev/sdX (virtio-scsi) or /dev/vdX (virtio-blk)")
    e = ss.add_parser("event", help="server event list SERVER | server event show SERVER REQ")
    e.add_argument("verb", choices=["list", "show"])
    e.add_argument("server")
    e.add_argument("request_id", nargs="?")
    for q in ss.choices.values():
        q.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_server)

    sp = sub.add_parser("image", help="images (list/show through the Image API; import and "
                                      "build-tiny register on this host)")
    im = sp.add_subparsers(dest="action", required=True)
    im.add_parser("list")
    im.add_parser("show").add_argument("image", help="id or name")
    c = im.add_parser("import", help="copy a local raw or qcow2 file in and register it")
    c.add_argument("file")
    c.add_argument("--name")
    c.add_argument("--property", action="append", default=[], metavar="KEY=VALUE",
                   type=_key_value,
                   help="an image property, e.g. hw_disk_bus=virtio (repeatable)")
    im.add_parser("build-tiny", help="build the tiny Linux image from Debian packages and "
                                     "register it (idempotent)")
    for q in im.choices.values():
        q.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_image)

    sp = sub.add_parser("audit", help="compare the database with libvirt, tgtd and this "
                                      "host's sessions; exit 0 only when nothing drifted")
    sp.add_argument("--repair", action="store_true",
                    help="fix what is safe to fix, say what was left, and audit again")
    sp.add_argument("--format", choices=["text", "json"], default="text")
    sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                    help="a traceback when the audit cannot run")
    sp.set_defaults(func=cmd_audit)

    from tether.identity.cli import add_parsers as add_identity_parsers

    add_identity_parsers(sub)  # user, project, role, application-credential

    sp = sub.add_parser("demo", help="the embedded mode end to end")
    sp.add_argument("--keep", action="store_true", help="leave what the demo created")
    sp.set_defaults(func=cmd_demo)
    return p


def failure(command: str, exc: Exception) -> str:
    """What went wrong, in one line, and what to do about it when we know."""
    from tether.client import ApiClientError, ApiUnreachable
    from tether.exceptions import TetherError
    from tether.virt.driver import VirtError
    from tether.volume.targets.base import TargetError

    if isinstance(exc, ApiUnreachable | ApiClientError | TetherError):
        return str(exc)
    if isinstance(exc, TargetError):
        return (f"the iSCSI target is not usable ({exc}); is tgtd running? "
                "(`tgtd`, or `tether demo`, which starts it)")
    if isinstance(exc, VirtError):
        return f"libvirt is not usable ({exc}); are virtlogd and libvirtd running?"
    what = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return (f"{command} failed: {type(exc).__name__}{': ' + what if what else ''} "
            "(--debug for the traceback)")


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:  # the program itself (not a test calling it in its own process):
        # whatever it or its children (qemu-img ...) create is private unless
        # made with a wider mode on purpose (tether.statedir)
        os.umask(0o077)
    args = build_parser().parse_args(argv)
    try:
        conf = config.load(args.config_file, args.state_dir)
    except FileNotFoundError as exc:
        print(f"tether: {exc}", file=sys.stderr)
        return 2
    try:
        rc: int = args.func(conf, args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line for operators; the traceback with --debug, and in
        if args.debug:        # the log file when the command writes one
            traceback.print_exc()
        print(f"tether: {failure(args.command, exc)}", file=sys.stderr)
        if logging.getLogger().handlers:
            LOG.error("tether %s failed", args.command, exc_info=exc,
                      extra={"file_only": True})
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
