"""CHAP secrets at rest: the database holds each volume's CHAP password
sealed (Fernet: AES-128-CBC + HMAC-SHA256, authenticated) with a key only
the volume services hold, never in clear.

The keys come from ``[volume] secret_key`` (comma-separated) or the file
``[volume] secret_key_file`` (default ``<state_dir>/secret.key``, one a
line); the first key seals, every key opens (rotation:
``docs/security.md``).  A key file is generated (0600, by exactly one of
several processes starting at once) only for a SQLite database -- one host,
the embedded mode -- whose volumes hold no sealed secret yet: a shared
database needs the same key configured on every volume host, and a database
already holding sealed secrets is never given a new key by accident.

At start (:func:`prepare`) every sealed secret is opened once: a missing or
wrong key stops the service with a message saying which, never a garbage
password later; secrets an older Tether left in clear are sealed, each with
a conditional UPDATE (what another process sealed first is left alone), so
the step is idempotent and a crash in the middle resumes at the next start.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from oslo_config import cfg

from tether import config, statedir
from tether.exceptions import TetherError
from tether.volume.repository import VolumeRepository

LOG = logging.getLogger(__name__)

SEALED = "fernet:"  # what a sealed secret starts with in the database


class SecretKeyError(TetherError):
    """The keys cannot open the database's CHAP secrets, or there are none."""


def is_sealed(stored: str) -> bool:
    return stored.startswith(SEALED)


class SecretBox:
    def __init__(self, keys: Sequence[str], source: str) -> None:
        """``keys``: Fernet keys, the first seals; ``source``: where they came
        from, for messages (never the keys themselves)."""
        if not keys:
            raise SecretKeyError(f"{source} holds no key")
        try:
            self._fernet = MultiFernet([Fernet(k.encode("ascii")) for k in keys])
        except (ValueError, UnicodeEncodeError):
            raise SecretKeyError(f"{source} holds something that is not a Fernet key (32 "
                                 "url-safe base64-encoded bytes)") from None
        self.source = source

    def __repr__(self) -> str:
        return f"SecretBox({self.source})"

    def seal(self, clear: str) -> str:
        return SEALED + self._fernet.encrypt(clear.encode()).decode("ascii")

    def open(self, stored: str, volume_id: str) -> str:
        if not is_sealed(stored):
            raise SecretKeyError(f"the CHAP secret of volume {volume_id} is not sealed: "
                                 "restart the volume service to seal it")
        try:
            return self._fernet.decrypt(stored[len(SEALED):].encode("ascii")).decode()
        except (InvalidToken, UnicodeError):
            raise SecretKeyError(f"the CHAP secret of volume {volume_id} does not open with "
                                 f"the keys of {self.source}: the key that sealed it is "
                                 "missing (see docs/security.md)") from None

    def reseal(self, stored: str, volume_id: str) -> str:
        """``stored`` sealed again with the first key (key rotation)."""
        return self.seal(self.open(stored, volume_id))


def parse_keys(text: str) -> list[str]:
    """Keys of a key file or option: one a line or comma-separated; ``#`` comments."""
    keys = []
    for line in text.splitlines():
        kept = line.split("#", 1)[0]
        keys += [k.strip() for k in kept.split(",") if k.strip()]
    return keys


def _may_generate(conf: cfg.ConfigOpts) -> bool:
    return statedir.sqlite_file(config.database_url(conf)) is not None


def load(conf: cfg.ConfigOpts, *, holds_sealed: bool, generate: bool = True) -> SecretBox:
    """The box of the configured keys.  A key file is generated only when
    ``generate``, the database is SQLite and ``holds_sealed`` is False."""
    configured: str | None = conf.volume.secret_key
    if configured:
        return SecretBox(parse_keys(configured), "[volume] secret_key")
    path = config.secret_key_file(conf)
    source = f"the key file {path}"
    try:
        with open(path, encoding="ascii") as f:
            text = f.read()
    except FileNotFoundError:
        if holds_sealed:
            raise SecretKeyError(
                f"the database holds sealed CHAP secrets but {path} does not exist: "
                "restore that key file (or set [volume] secret_key) from the volume host "
                "that sealed them") from None
        if not generate or not _may_generate(conf):
            raise SecretKeyError(
                f"no key to seal CHAP secrets with: {path} does not exist.  With a shared "
                "database, give every volume service the same key: [volume] secret_key, or "
                "a copy of one key file (`tether secrets generate-key` prints a key)"
                ) from None
        text = statedir.read_or_create(path, Fernet.generate_key().decode("ascii") + "\n")
        LOG.info("generated the key that seals CHAP secrets: %s", path)
    except UnicodeDecodeError:
        raise SecretKeyError(f"{source} is not a key file") from None
    statedir.tighten(path, statedir.PRIVATE_FILE)
    return SecretBox(parse_keys(text), source)


def prepare(conf: cfg.ConfigOpts, repo: VolumeRepository, generate: bool = True) -> SecretBox:
    """The volume service's box, checked against every sealed secret, with
    the secrets left in clear sealed (see the module's docstring)."""
    with repo.begin() as c:
        stored = repo.chap_passwords(c)
    sealed = {vid: s for vid, s in stored.items() if is_sealed(s)}
    box = load(conf, holds_sealed=bool(sealed), generate=generate)
    for vid, secret in sealed.items():
        box.open(secret, vid)
    clear = {vid: s for vid, s in stored.items() if not is_sealed(s)}
    done = 0
    for vid, secret in clear.items():
        with repo.begin() as c:
            done += repo.replace_chap_password(c, vid, secret, box.seal(secret))
    if done:
        LOG.warning("sealed %d CHAP secret(s) an older Tether had kept in clear", done)
    return box


def rotate(conf: cfg.ConfigOpts, repo: VolumeRepository) -> tuple[int, int]:
    """Seal every secret again with the first configured key: (resealed,
    left as they were).  Each row is its own conditional UPDATE: run again
    after a crash, it finishes the job."""
    box = load(conf, holds_sealed=True, generate=False)
    with repo.begin() as c:
        stored = repo.chap_passwords(c)
    resealed = kept = 0
    for vid, secret in stored.items():
        new = box.seal(box.open(secret, vid) if is_sealed(secret) else secret)
        with repo.begin() as c:
            if repo.replace_chap_password(c, vid, secret, new):
                resealed += 1
            else:
                kept += 1  # changed meanwhile (deleted, or sealed by a service)
    return resealed, kept


def new_key() -> str:
    return Fernet.generate_key().decode("ascii")


def key_file_with(path: str, keys: Sequence[str]) -> None:
    """Replace the key file by one holding ``keys`` (first seals): written 0600
    beside it and renamed over it, so a crash leaves the old or the new file."""
    tmp = f"{path}.new"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                 statedir.PRIVATE_FILE)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write("".join(k + "\n" for k in keys))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
