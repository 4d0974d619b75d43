"""API keys: the keys file (0600, atomic, hashes only) and KeyRing lookups and reloads."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import time
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
from typer.testing import CliRunner

from services.gateway.auth import AuthError, authorize, check_auth_config, check_bearer
from services.gateway.keys import KeyRing, KeysFileError, parse_bearer
from services.shared.settings import Settings


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "secrets" / "keys.json"


def test_bearer_key_has_the_documented_form_and_only_its_hash_is_stored(path: Path) -> None:
    ring = KeyRing(path)
    record, token = ring.create("shop", "write")
    m = re.fullmatch(r"sk_([0-9a-f]{12})_([A-Za-z0-9_-]{32,})", token)
    assert m is not None, token
    assert m[1] == record.id and record.kind == "bearer" and record.scope == "write"
    text = path.read_text()
    assert m[2] not in text and token not in text  # the secret is never written
    [stored] = orjson.loads(text)["keys"]
    assert stored["hash"] == hashlib.sha256(m[2].encode()).hexdigest()
    assert stored["program"] == "shop" and stored["revoked"] is False and "secret" not in stored
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stored["created_at"])
    assert ring.lookup_bearer(token) == record


def test_keys_file_is_mode_0600_whatever_the_umask(path: Path) -> None:
    old = os.umask(0o000)
    try:
        ring = KeyRing(path)
        ring.create("shop", "read")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        ring.revoke(ring.records()[0].id)  # a rewrite keeps it
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # no leftovers


def test_wrong_secret_unknown_id_and_garbage_are_not_found(path: Path) -> None:
    ring = KeyRing(path)
    record, token = ring.create("shop", "write")
    wrong_secret = token[:-1] + ("A" if token[-1] != "A" else "B")
    other_id = f"sk_{'0' * 12}_{token[16:]}"
    for bad in (wrong_secret, other_id, "sk_short", "", "Bearer " + token, token + " "):
        assert ring.lookup_bearer(bad) is None, bad
    assert parse_bearer(token) == (record.id, token[16:])


def test_sigv4_key_keeps_its_secret_and_is_found_by_access_key_id(path: Path) -> None:
    ring = KeyRing(path)
    record, secret = ring.create("shop", "write", sigv4=True)
    assert re.fullmatch(r"AKSL[A-Z0-9]{16}", record.id)
    assert re.fullmatch(r"[A-Za-z0-9]{40}", secret)
    [stored] = orjson.loads(path.read_bytes())["keys"]
    assert stored["kind"] == "sigv4" and stored["secret"] == secret
    assert stored["hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert ring.lookup_access_key(record.id) == record
    assert ring.lookup_bearer(f"sk_{record.id[:12]}_{secret}") is None  # kinds do not mix
    bearer, _ = ring.create("shop", "write")
    assert ring.lookup_access_key(bearer.id) is None


def test_revoke_marks_the_key_and_keeps_the_others(path: Path) -> None:
    ring = KeyRing(path)
    a, token_a = ring.create("shop", "write")
    _, token_b = ring.create("shop", "read")
    ring.revoke(a.id)
    assert ring.lookup_bearer(token_a).revoked is True  # type: ignore[union-attr]
    assert ring.lookup_bearer(token_b).revoked is False  # type: ignore[union-attr]
    with pytest.raises(KeyError):
        ring.revoke("nope")


def test_a_running_ring_sees_another_process_revoke_within_its_check_interval(path: Path) -> None:
    writer = KeyRing(path)
    record, token = writer.create("shop", "write")
    reader = KeyRing(path, check_interval_s=0.2)
    assert reader.lookup_bearer(token).revoked is False  # type: ignore[union-attr]
    writer.revoke(record.id)
    new, new_token = writer.create("shop", "read")
    assert reader.lookup_bearer(new_token) is None  # not re-checked yet: at most every 0.2 s
    time.sleep(0.25)
    assert reader.lookup_bearer(token).revoked is True  # type: ignore[union-attr]
    assert reader.lookup_bearer(new_token) == new


def test_a_broken_file_is_an_error_at_start_and_ignored_on_reload(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ring = KeyRing(path, check_interval_s=0.0)
    _, token = ring.create("shop", "write")
    path.write_text("{not json")
    with caplog.at_level(logging.ERROR):
        assert ring.lookup_bearer(token) is not None  # keeps the keys it had
    assert "not reloaded" in caplog.text
    with pytest.raises(KeysFileError):
        KeyRing(path)


def test_missing_file_holds_no_keys(path: Path) -> None:
    ring = KeyRing(path)
    assert ring.records() == []
    assert ring.lookup_bearer("sk_0123456789ab_" + "x" * 43) is None


def _gateway(ring: KeyRing | None) -> SimpleNamespace:
    return SimpleNamespace(keys=ring)


def test_check_bearer_rules(path: Path) -> None:
    ring = KeyRing(path)
    write, w = ring.create("shop", "write")
    _, r = ring.create("shop", "read")
    gw = _gateway(ring)
    check_bearer(gw, f"Bearer {w}", "shop", "write")  # type: ignore[arg-type]
    check_bearer(gw, f"bearer  {r} ", "shop", "read")  # type: ignore[arg-type]
    cases = [
        (None, "shop", "write", 401), ("", "shop", "write", 401),
        (f"Basic {w}", "shop", "write", 401), ("Bearer", "shop", "write", 401),
        ("Bearer sk_nope", "shop", "write", 401),
        (f"Bearer {w}", "other", "write", 403),  # another program's key
        (f"Bearer {w}", "shop", "read", 403),  # a write key cannot read
        (f"Bearer {r}", "shop", "write", 403),  # a read key cannot write
    ]
    for header, program, scope, status in cases:
        with pytest.raises(AuthError) as exc:
            check_bearer(gw, header, program, scope)  # type: ignore[arg-type]
        assert exc.value.status == status, (header, program, scope)
    ring.revoke(write.id)
    ring.reload()
    with pytest.raises(AuthError) as exc:
        check_bearer(gw, f"Bearer {w}", "shop", "write")  # type: ignore[arg-type]
    assert exc.value.status == 401 and "revoked" in exc.value.message
    check_bearer(_gateway(None), None, "shop", "write")  # type: ignore[arg-type]  # open


def test_authorize_checks_scope_and_program(path: Path) -> None:
    record, _ = KeyRing(path).create("shop", "read")
    authorize(record, "shop", "read")
    authorize(record, None, "read")
    for program, scope in (("shop", "write"), ("other", "read")):
        with pytest.raises(AuthError) as exc:
            authorize(record, program, scope)  # type: ignore[arg-type]
        assert exc.value.status == 403 and exc.value.aws_type == "AccessDeniedException"


def test_start_up_refuses_open_non_loopback_and_warns_on_loopback(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for host in ("0.0.0.0", "10.1.2.3", "::", "gateway.example.com"):
        with pytest.raises(SystemExit) as exc:
            check_auth_config(Settings(http_host=host, keys_file=None, auth="auto"))
        assert "SLUICE_KEYS_FILE" in str(exc.value.code) and "SLUICE_AUTH=off" in str(exc.value.code)
    with caplog.at_level(logging.WARNING):
        for host in ("127.0.0.1", "localhost", "::1"):
            check_auth_config(Settings(http_host=host, keys_file=None, auth="auto"))
    assert caplog.text.count("running OPEN: no SLUICE_KEYS_FILE") == 3
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        check_auth_config(Settings(http_host="0.0.0.0", keys_file=None, auth="off"))
    assert "running OPEN" in caplog.text
    KeyRing(path).create("shop", "write")
    check_auth_config(Settings(http_host="0.0.0.0", keys_file=path))  # keys: fine anywhere
    path.write_text("[]")
    with pytest.raises(SystemExit, match="bad SLUICE_KEYS_FILE"):
        check_auth_config(Settings(http_host="0.0.0.0", keys_file=path))


def test_cli_create_prints_once_list_hides_secrets_revoke(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.cli import app

    runner = CliRunner()
    monkeypatch.delenv("SLUICE_KEYS_FILE", raising=False)
    unset = runner.invoke(app, ["keys", "list"])
    assert unset.exit_code == 2 and "SLUICE_KEYS_FILE" in unset.output
    monkeypatch.setenv("SLUICE_KEYS_FILE", str(path))
    made = runner.invoke(app, ["keys", "create", "--program", "shop", "--scope", "write"])
    assert made.exit_code == 0, made.output
    token = re.search(r"sk_[0-9a-f]{12}_\S+", made.output)[0]  # type: ignore[index]
    sig = runner.invoke(app, ["keys", "create", "--program", "shop", "--scope", "write", "--sigv4"])
    assert sig.exit_code == 0, sig.output
    secret = re.search(r"aws_secret_access_key = (\S+)", sig.output)[1]  # type: ignore[index]
    assert runner.invoke(app, ["keys", "create", "--program", "shop", "--scope", "admin"]).exit_code == 2
    listed = runner.invoke(app, ["keys", "list"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0
    key_id = token[3:15]
    assert key_id in listed.output and "sigv4" in listed.output and "bearer" in listed.output
    hashes = [k["hash"] for k in orjson.loads(path.read_bytes())["keys"]]
    for never in (token[16:], secret, *hashes):
        assert never not in listed.output
    revoked = runner.invoke(app, ["keys", "revoke", key_id])
    assert revoked.exit_code == 0 and key_id in revoked.output
    assert KeyRing(path).lookup_bearer(token).revoked is True  # type: ignore[union-attr]
    assert runner.invoke(app, ["keys", "revoke", "nope"]).exit_code == 1
