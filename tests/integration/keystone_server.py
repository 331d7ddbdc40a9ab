"""A small threaded WSGI server for Keystone's public application, run with
``.venv-keystone/bin/python`` (Keystone's own venv, not Tether's):
``keystone_server.py CONFIG_FILE PORT``.  It prints ``ready`` once listening
and serves until terminated.  Used by tests/integration/keystone.py only."""

from __future__ import annotations

import os
import signal
import sys
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


class Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write("keystone %s\n" % (format % args))


def main() -> None:
    config_file, port = sys.argv[1], int(sys.argv[2])
    del sys.argv[1:]  # Keystone parses the command line as its own options
    os.environ["OS_KEYSTONE_CONFIG_FILES"] = config_file
    # this script's folder holds the fixture module keystone.py: not Keystone
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    from keystone.server import wsgi

    app = wsgi.initialize_public_application()
    server = make_server("127.0.0.1", port, app, server_class=Server,
                         handler_class=QuietHandler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
