"""The Kafka security settings rendered for librdkafka and for aiokafka (through Faust's own
mapping) must say the same thing for every combination; secrets must stay out of what is
printed."""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
import trustme
from confluent_kafka import KafkaError
from pydantic import ValidationError

from services.shared.kafka import client_config, consumer_config, producer_config
from services.shared.kafka_security import (
    Refusals,
    aiokafka_security,
    describe,
    librdkafka_security,
    token_source,
)
from services.shared.settings import Settings

SECRET = "s3cr3t-Pa55"
TOKEN = ("token-from-test", 2_000_000_000.0)


def fake_token() -> tuple[str, float]:
    """An OAUTHBEARER token source named as package.module:function."""
    return TOKEN


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    client = ca.issue_cert("sluice-client")
    paths = {"ca": root / "ca.pem", "cert": root / "client.pem", "key": root / "client.key"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    client.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    client.private_key_pem.write_to_path(str(paths["key"]))
    return paths


PROTOCOLS = ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
MECHANISMS = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]


def combinations(pki: dict[str, Path]) -> list[dict[str, Any]]:
    out = []
    for protocol in PROTOCOLS:
        tls = protocol.endswith("SSL")
        mechanisms: list[str | None] = list(MECHANISMS) if protocol.startswith("SASL") else [None]
        for mechanism, ca, mutual, verify in itertools.product(
                mechanisms, [None, pki["ca"]] if tls else [None], [False, True] if tls else [False],
                [True, False] if tls else [True]):
            kw: dict[str, Any] = {"kafka_security_protocol": protocol,
                                  "kafka_sasl_mechanism": mechanism,
                                  "kafka_ssl_ca_location": ca, "kafka_ssl_verify": verify}
            if mutual:
                kw |= {"kafka_ssl_certificate_location": pki["cert"],
                       "kafka_ssl_key_location": pki["key"]}
            if mechanism == "OAUTHBEARER":
                kw["kafka_sasl_oauth_provider"] = f"{__name__}:fake_token"
            elif mechanism:
                kw |= {"kafka_sasl_username": "sluice", "kafka_sasl_password": SECRET}
            out.append(kw)
    return out


def from_librdkafka(conf: dict[str, object]) -> dict[str, object]:
    tls = conf["security.protocol"] in ("SSL", "SASL_SSL")
    mechanism = conf.get("sasl.mechanism")
    token = conf["oauth_cb"]("") if mechanism == "OAUTHBEARER" else None  # type: ignore[operator]
    return {
        "protocol": conf["security.protocol"], "mechanism": mechanism,
        "username": conf.get("sasl.username"), "password": conf.get("sasl.password"),
        "token": token[0] if token else None,
        "verify": conf.get("enable.ssl.certificate.verification", True) if tls else None,
        "hostname": conf.get("ssl.endpoint.identification.algorithm") == "https" if tls else None,
        "client_cert": "ssl.certificate.location" in conf if tls else None,
    }


def from_aiokafka(auth: dict[str, Any], client_cert: bool) -> dict[str, object]:
    context: ssl.SSLContext | None = auth.get("ssl_context")
    provider = auth.get("sasl_oauth_token_provider")
    return {
        "protocol": auth["security_protocol"], "mechanism": auth.get("sasl_mechanism"),
        "username": auth.get("sasl_plain_username"), "password": auth.get("sasl_plain_password"),
        "token": asyncio.run(provider.token()) if provider else None,
        "verify": context.verify_mode == ssl.CERT_REQUIRED if context else None,
        "hostname": context.check_hostname if context else None,
        "client_cert": client_cert if context else None,
    }


def test_librdkafka_and_aiokafka_renderings_agree_for_every_combination(
        pki: dict[str, Path]) -> None:
    cases = combinations(pki)
    assert len(cases) == 1 + 8 + 4 + 4 * 8  # PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL
    for kw in cases:
        settings = Settings(**kw)
        rdk = from_librdkafka(librdkafka_security(settings))
        aio = from_aiokafka(dict(aiokafka_security(settings)),
                            kw.get("kafka_ssl_certificate_location") is not None)
        assert rdk == aio, kw
        assert rdk["protocol"] == kw["kafka_security_protocol"]
        assert rdk["mechanism"] == kw["kafka_sasl_mechanism"]
        if kw["kafka_sasl_mechanism"] in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            assert rdk["password"] == SECRET
        if kw["kafka_sasl_mechanism"] == "OAUTHBEARER":
            assert rdk["token"] == TOKEN[0]
        if kw["kafka_security_protocol"].endswith("SSL"):
            assert rdk["verify"] is kw["kafka_ssl_verify"] and rdk["hostname"] is kw["kafka_ssl_verify"]


def test_the_aiokafka_context_trusts_the_ca_named(pki: dict[str, Path]) -> None:
    settings = Settings(kafka_security_protocol="SSL", kafka_ssl_ca_location=pki["ca"])
    context = aiokafka_security(settings)["ssl_context"]
    issuers = [dict(x[0] for x in cert["subject"]) for cert in context.get_ca_certs()]
    assert any("trustme" in " ".join(i.values()) for i in issuers), issuers
    assert librdkafka_security(settings)["ssl.ca.location"] == str(pki["ca"])
    # no CA named: the system's trust store on both sides
    assert librdkafka_security(Settings(kafka_security_protocol="SSL"))["ssl.ca.location"] == "probe"


def test_every_librdkafka_client_config_carries_security_and_extras(pki: dict[str, Path]) -> None:
    settings = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                        kafka_sasl_username="u", kafka_sasl_password=SECRET,
                        kafka_ssl_ca_location=pki["ca"],
                        kafka_extra={"client.rack": "use1-az1", "ssl.cipher.suites": "HIGH"})
    for conf in (client_config(settings), producer_config(settings),
                 consumer_config(settings, "g")):
        assert conf["security.protocol"] == "SASL_SSL"
        assert conf["sasl.mechanism"] == "SCRAM-SHA-512" and conf["sasl.password"] == SECRET
        assert conf["client.rack"] == "use1-az1" and conf["ssl.cipher.suites"] == "HIGH"
        assert callable(conf["error_cb"])


@pytest.mark.parametrize(("kw", "says"), [
    ({"kafka_security_protocol": "SASL_SSL"}, "needs SLUICE_KAFKA_SASL_MECHANISM"),
    ({"kafka_security_protocol": "SSL", "kafka_sasl_mechanism": "PLAIN"}, "use SASL_SSL"),
    ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "SCRAM-SHA-256",
      "kafka_sasl_username": "u"}, "SLUICE_KAFKA_SASL_PASSWORD"),
    ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "OAUTHBEARER"},
     "SLUICE_KAFKA_SASL_OAUTH_PROVIDER"),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_key_location": "/k.pem"}, "mutual TLS"),
    ({"kafka_security_protocol": "TLS"}, "PLAINTEXT"),
])
def test_incomplete_settings_are_refused_naming_what_to_set(kw: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        Settings(**kw)


def test_secrets_never_appear_in_what_is_printed(pki: dict[str, Path]) -> None:
    settings = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="PLAIN",
                        kafka_sasl_username="api-key", kafka_sasl_password=SECRET,
                        kafka_ssl_key_password=SECRET, kafka_ssl_ca_location=pki["ca"])
    for text in (repr(settings), str(settings), settings.model_dump_json(), describe(settings)):
        assert SECRET not in text
    assert describe(settings) == "SASL_SSL, PLAIN as api-key"
    assert "NOT verified" in describe(Settings(kafka_security_protocol="SSL", kafka_ssl_verify=False))


def test_a_refusal_is_kept_for_readiness_and_logged_once_per_reason(
        caplog: pytest.LogCaptureFixture) -> None:
    refusals = Refusals()
    auth = KafkaError(KafkaError._AUTHENTICATION, "SASL authentication error: Authentication "
                      "failed during authentication due to invalid credentials with SASL "
                      "mechanism SCRAM-SHA-512 (after 3ms in state AUTH_REQ)")
    with caplog.at_level(logging.ERROR):
        refusals.note(KafkaError(KafkaError._TRANSPORT, "connection refused"))
        assert refusals.recent() is None  # a broker away is not a refusal
        for _ in range(5):
            refusals.note(auth)
    reason = refusals.recent()
    assert reason is not None and "invalid credentials" in reason and "after 3ms" not in reason
    assert "SLUICE_KAFKA_SASL_MECHANISM, _USERNAME and _PASSWORD" in reason
    assert [r.getMessage() for r in caplog.records] == [reason]
    assert refusals.recent(within_s=0.0) is None  # it ages out once the broker accepts again


def test_msk_iam_tokens_are_signed_and_their_expiry_is_in_seconds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example")
    settings = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="OAUTHBEARER",
                        kafka_sasl_oauth_provider="msk_iam", kafka_aws_region="eu-west-1")
    token, expiry = token_source(settings)()
    url = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    assert url.startswith("https://kafka.eu-west-1.amazonaws.com/?Action=kafka-cluster%3AConnect")
    assert "X-Amz-Signature=" in url
    assert time.time() < expiry < time.time() + 3600  # seconds, as librdkafka wants
    token2, _ = librdkafka_security(settings)["oauth_cb"]("")  # type: ignore[operator]
    assert token2.startswith("aHR0cHM6Ly9rYWZrYS5ldS13ZXN0LTEu")
    missing = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="OAUTHBEARER",
                       kafka_sasl_oauth_provider="msk_iam")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    with pytest.raises(ValueError, match="SLUICE_KAFKA_AWS_REGION"):
        token_source(missing)
