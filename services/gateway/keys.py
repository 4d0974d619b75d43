"""API keys per program: the keys file and :class:`KeyRing`, which reads it.

The file (``SLUICE_KEYS_FILE``) is JSON, written with mode 0600 and replaced atomically:
``{"version": 1, "keys": [record, ...]}``. Each record: ``id``, ``program``, ``scope``
(``write`` or ``read``), ``kind`` (``bearer`` or ``sigv4``), ``hash`` (hex SHA-256 of the
secret), ``created_at`` (ISO 8601 UTC), ``revoked``.

- Bearer keys read ``sk_<id>_<secret>``: ``id`` is 12 hex characters, ``secret`` 43
  URL-safe characters from :mod:`secrets`. Only the hash is kept; a token is checked by
  hashing its secret and comparing with :func:`hmac.compare_digest`.
- SigV4 keys (Amazon Personalize dialect): the access key id is ``AKSL`` + 16 upper-case
  letters and digits, the secret 40 letters and digits. Their records also hold the
  ``secret`` itself: a SigV4 signature is an HMAC keyed by the secret, so verifying one
  needs it (a documented exception; this is why the file is 0600).

``sluice keys create|list|revoke`` edit the file; running gateways notice a changed file
(its mtime, size or inode) within a second and reload it, so a revoked key stops working
without a restart.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import logging
import os
import secrets
import string
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson

log = logging.getLogger(__name__)

Scope = Literal["write", "read"]
Kind = Literal["bearer", "sigv4"]
SCOPES: tuple[str, ...] = ("write", "read")
KINDS: tuple[str, ...] = ("bearer", "sigv4")
BEARER_PREFIX = "sk_"
ID_HEX_CHARS = 12
SIGV4_PREFIX = "AKSL"
_UPPER_ALNUM = string.ascii_uppercase + string.digits
_ALNUM = string.ascii_letters + string.digits
FILE_VERSION = 1


class KeysFileError(ValueError):
    """The keys file exists but is not a keys file (bad JSON or records)."""


@dataclass(frozen=True)
class KeyRecord:
    id: str
    program: str
    scope: str  # "write" | "read"
    kind: str  # "bearer" | "sigv4"
    hash: str  # hex SHA-256 of the secret
    created_at: str
    revoked: bool = False
    secret: str | None = None  # sigv4 only: verifying a signature needs the secret

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.secret is None:
            del data["secret"]
        return data

    @classmethod
    def from_json(cls, data: Any) -> KeyRecord:
        if not isinstance(data, dict):
            raise KeysFileError("a key record is not a JSON object")
        try:
            record = cls(
                id=data["id"], program=data["program"], scope=data["scope"],
                kind=data.get("kind", "bearer"), hash=data["hash"],
                created_at=data["created_at"], revoked=data.get("revoked", False),
                secret=data.get("secret"),
            )
        except KeyError as exc:
            raise KeysFileError(f"a key record has no {exc.args[0]!r}") from None
        if not all(isinstance(v, str) and v for v in
                   (record.id, record.program, record.hash, record.created_at)):
            raise KeysFileError(f"key {record.id!r}: id, program, hash, created_at must be strings")
        if record.scope not in SCOPES or record.kind not in KINDS:
            raise KeysFileError(f"key {record.id!r}: bad scope {record.scope!r} or kind {record.kind!r}")
        if not isinstance(record.revoked, bool):
            raise KeysFileError(f"key {record.id!r}: revoked must be true or false")
        if record.kind == "sigv4" and not isinstance(record.secret, str):
            raise KeysFileError(f"sigv4 key {record.id!r} has no secret")
        return record


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_bearer() -> tuple[str, str, str]:
    """(id, secret, token) of a new bearer key; the token is ``sk_<id>_<secret>``."""
    key_id = secrets.token_hex(ID_HEX_CHARS // 2)
    secret = secrets.token_urlsafe(32)  # 43 characters, 256 bits
    return key_id, secret, f"{BEARER_PREFIX}{key_id}_{secret}"


def new_sigv4() -> tuple[str, str]:
    """(access key id, secret access key) of a new SigV4 key."""
    access_key = SIGV4_PREFIX + "".join(secrets.choice(_UPPER_ALNUM) for _ in range(16))
    secret = "".join(secrets.choice(_ALNUM) for _ in range(40))
    return access_key, secret


def parse_bearer(token: str) -> tuple[str, str] | None:
    """``sk_<id>_<secret>`` -> (id, secret); None if the token has another form."""
    if not token.startswith(BEARER_PREFIX):
        return None
    rest = token[len(BEARER_PREFIX):]
    key_id, sep, secret = rest[:ID_HEX_CHARS], rest[ID_HEX_CHARS:ID_HEX_CHARS + 1], rest[ID_HEX_CHARS + 1:]
    if sep != "_" or len(secret) < 32 or not all(c in string.hexdigits for c in key_id):
        return None
    return key_id.lower(), secret


def read_keys_file(path: Path) -> list[KeyRecord]:
    """The records of ``path``; a missing file holds no keys."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    if not raw.strip():
        return []
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise KeysFileError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise KeysFileError(f'{path}: expected {{"version": 1, "keys": [...]}}')
    return [KeyRecord.from_json(item) for item in data["keys"]]


def write_keys_file(path: Path, records: list[KeyRecord]) -> None:
    """Write ``records`` to a new file of mode 0600 next to ``path``, then rename it over
    ``path``: readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = orjson.dumps(
        {"version": FILE_VERSION, "keys": [r.to_json() for r in records]}, option=orjson.OPT_INDENT_2
    )
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename durable too
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise writers (two `sluice keys` at once) with a lock file next to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class KeyRing:
    """The keys of one keys file, reloaded when the file changes (checked at most once
    per ``check_interval_s``). Lookups never raise for bad input: they return None."""

    def __init__(self, path: Path, check_interval_s: float = 1.0) -> None:
        self.path = Path(path)
        self.check_interval_s = check_interval_s
        self._lock = threading.Lock()
        self._by_id: dict[str, KeyRecord] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._checked_at = float("-inf")
        self.reload()  # a broken file at start is an error, not "no keys"

    def check_file(self) -> None:
        """Log what is wrong with the file for a gateway about to serve with it."""
        if self._stamp is None:
            log.warning("keys file %s does not exist: every request will be refused until "
                        "keys are created (sluice keys create)", self.path)
        elif self.path.stat().st_mode & 0o077:
            log.warning("keys file %s is readable by group or others; chmod 600 it", self.path)

    # -- reading ------------------------------------------------------------------------
    def reload(self) -> None:
        stamp = _stamp(self.path)
        records = read_keys_file(self.path)
        with self._lock:
            self._by_id = {r.id: r for r in records}
            self._stamp = stamp
            self._checked_at = time.monotonic()

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < self.check_interval_s:
            return
        self._checked_at = now
        if _stamp(self.path) == self._stamp:
            return
        try:
            self.reload()
            log.info("keys file %s reloaded: %d keys", self.path, len(self._by_id))
        except (KeysFileError, OSError) as exc:
            # a half-edited file by hand: keep serving with the keys we had
            log.error("keys file %s not reloaded, keeping the previous keys: %s", self.path, exc)

    def records(self) -> list[KeyRecord]:
        self._refresh()
        return list(self._by_id.values())

    def get(self, key_id: str) -> KeyRecord | None:
        self._refresh()
        return self._by_id.get(key_id)

    def lookup_bearer(self, token: str) -> KeyRecord | None:
        """The bearer key whose secret ``token`` carries (revoked ones too: callers decide);
        None for an unknown id or a wrong secret."""
        parsed = parse_bearer(token)
        if parsed is None:
            return None
        key_id, secret = parsed
        record = self.get(key_id)
        if record is None or record.kind != "bearer":
            return None
        if not hmac.compare_digest(hash_secret(secret).encode(), record.hash.encode()):
            return None
        return record

    def lookup_access_key(self, access_key_id: str) -> KeyRecord | None:
        """The SigV4 key of this access key id (revoked ones too), or None."""
        record = self.get(access_key_id)
        if record is None or record.kind != "sigv4":
            return None
        return record

    # -- writing (the CLI) --------------------------------------------------------------
    def create(self, program: str, scope: str, sigv4: bool = False) -> tuple[KeyRecord, str]:
        """A new key; returns its record and the secret to hand out ONCE: the bearer token
        ``sk_<id>_<secret>``, or for SigV4 the secret access key (the id is the record's)."""
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, not {scope!r}")
        if not program:
            raise ValueError("program must not be empty")
        created_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        with _locked(self.path):
            records = read_keys_file(self.path)
            taken = {r.id for r in records}
            while True:
                if sigv4:
                    key_id, secret = new_sigv4()
                    handed_out = secret
                else:
                    key_id, secret, handed_out = new_bearer()
                if key_id not in taken:
                    break
            record = KeyRecord(
                id=key_id, program=program, scope=scope, kind="sigv4" if sigv4 else "bearer",
                hash=hash_secret(secret), created_at=created_at, revoked=False,
                secret=secret if sigv4 else None,
            )
            write_keys_file(self.path, [*records, record])
        self.reload()
        return record, handed_out

    def revoke(self, key_id: str) -> KeyRecord:
        """Mark a key revoked (kept in the file, so its id is never reused); KeyError if unknown."""
        with _locked(self.path):
            records = read_keys_file(self.path)
            found = next((r for r in records if r.id == key_id), None)
            if found is None:
                raise KeyError(key_id)
            revoked = KeyRecord(**(asdict(found) | {"revoked": True}))
            write_keys_file(self.path, [revoked if r.id == key_id else r for r in records])
        self.reload()
        return revoked
