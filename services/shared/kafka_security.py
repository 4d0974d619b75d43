"""How every Kafka client of every role reaches a secured cluster: TLS and SASL.

One settings model (``Settings.kafka_*``, in librdkafka's vocabulary so operators copy it
from their provider's page), rendered once per client library: ``librdkafka_security``
for confluent-kafka (the gateway, the sink, the changelog producer, admin and lag
readers) and ``faust_credentials`` for Faust's aiokafka clients (the agents' consumer and
producer). ``aiokafka_security`` is what Faust hands aiokafka, through Faust's own mapping,
so tests compare the two renderings for every combination.

Secrets stay ``SecretStr`` until a client is built; nothing here logs them. A broker that
refuses Sluice (a certificate it cannot verify, a wrong password) is reported once per
reason in one line naming the setting to check, and kept for ``/readyz``.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import re
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaError

from services.shared.settings import Settings

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT

log = logging.getLogger(__name__)

TokenSource = Callable[[], tuple[str, float]]  # () -> (token, expiry as epoch seconds)


def uses_tls(settings: Settings) -> bool:
    return settings.kafka_security_protocol in ("SSL", "SASL_SSL")


# -- librdkafka ------------------------------------------------------------------------
def librdkafka_security(settings: Settings) -> dict[str, object]:
    """The security properties of a confluent-kafka client (then ``kafka_extra``)."""
    s = settings
    out: dict[str, object] = {"security.protocol": s.kafka_security_protocol}
    if uses_tls(s):
        # unset: the system's trust store ("probe": librdkafka looks where the OS keeps it)
        out["ssl.ca.location"] = str(s.kafka_ssl_ca_location or "probe")
        if s.kafka_ssl_certificate_location and s.kafka_ssl_key_location:
            out["ssl.certificate.location"] = str(s.kafka_ssl_certificate_location)
            out["ssl.key.location"] = str(s.kafka_ssl_key_location)
        if s.kafka_ssl_key_password is not None:
            out["ssl.key.password"] = s.kafka_ssl_key_password.get_secret_value()
        if not s.kafka_ssl_verify:
            out["enable.ssl.certificate.verification"] = False
            out["ssl.endpoint.identification.algorithm"] = "none"
        else:
            out["ssl.endpoint.identification.algorithm"] = "https"
    if s.kafka_sasl_mechanism is not None:
        out["sasl.mechanism"] = s.kafka_sasl_mechanism
        if s.kafka_sasl_mechanism == "OAUTHBEARER":
            if s.kafka_sasl_oauth_provider:
                source = token_source(s)
                out["oauth_cb"] = lambda _config: source()
        else:
            out["sasl.username"] = s.kafka_sasl_username
            out["sasl.password"] = (s.kafka_sasl_password.get_secret_value()
                                    if s.kafka_sasl_password else None)
    return out | dict(s.kafka_extra)


# -- aiokafka / Faust ------------------------------------------------------------------
def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of aiokafka clients: the same CA, client certificate and checks."""
    from aiokafka.helpers import create_ssl_context

    s = settings
    if not uses_tls(s):
        return None
    context = create_ssl_context(
        cafile=str(s.kafka_ssl_ca_location) if s.kafka_ssl_ca_location else None,
        certfile=str(s.kafka_ssl_certificate_location) if s.kafka_ssl_certificate_location else None,
        keyfile=str(s.kafka_ssl_key_location) if s.kafka_ssl_key_location else None,
        password=s.kafka_ssl_key_password.get_secret_value() if s.kafka_ssl_key_password else None,
    )
    if not s.kafka_ssl_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _token_provider(source: TokenSource) -> Any:
    """aiokafka's OAUTHBEARER hook over a token source (which may block: a thread)."""
    from aiokafka.abc import AbstractTokenProvider

    class TokenProvider(AbstractTokenProvider):  # type: ignore[misc]
        async def token(self) -> str:
            token, _expiry = await asyncio.to_thread(source)
            return token

    return TokenProvider()


def faust_credentials(settings: Settings) -> CredentialsT | None:
    """Faust's ``broker_credentials`` for the agents (None: plaintext). Faust and aiokafka
    are imported here, not at the top: the gateway and the sink never load them."""
    from faust.auth import OAuthCredentials, SASLCredentials, SSLCredentials

    s = settings
    context = ssl_context(s)
    if s.kafka_sasl_mechanism is None:
        return SSLCredentials(context) if context is not None else None
    if s.kafka_sasl_mechanism == "OAUTHBEARER":
        if not s.kafka_sasl_oauth_provider:
            raise ValueError("the agents (aiokafka) need SLUICE_KAFKA_SASL_OAUTH_PROVIDER for "
                             "OAUTHBEARER: librdkafka's own OIDC settings do not reach them")
        return OAuthCredentials(oauth_cb=_token_provider(token_source(s)), ssl_context=context)
    return SASLCredentials(
        username=s.kafka_sasl_username,
        password=s.kafka_sasl_password.get_secret_value() if s.kafka_sasl_password else None,
        ssl_context=context, mechanism=s.kafka_sasl_mechanism,
    )


def aiokafka_security(settings: Settings) -> Mapping[str, Any]:
    """What Faust passes aiokafka for these settings (also for Sluice's own aiokafka
    clients: benches and tests)."""
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    return credentials_to_aiokafka_auth(faust_credentials(settings))


# -- OAUTHBEARER token sources -----------------------------------------------------------
def token_source(settings: Settings) -> TokenSource:
    """``msk_iam`` or ``package.module:function`` -> a function returning (token, expiry)."""
    name = settings.kafka_sasl_oauth_provider or ""
    if name == "msk_iam":
        return _msk_iam(settings.kafka_aws_region)
    module, _, attr = name.partition(":")
    if not attr:
        raise ValueError(f"SLUICE_KAFKA_SASL_OAUTH_PROVIDER={name!r}: expected msk_iam or "
                         "package.module:function")
    source: TokenSource = getattr(importlib.import_module(module), attr)
    return source


def _msk_iam(region: str | None) -> TokenSource:
    try:
        from aws_msk_iam_sasl_signer import MSKAuthTokenProvider  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ValueError("SLUICE_KAFKA_SASL_OAUTH_PROVIDER=msk_iam needs the signer: "
                         "pip install 'sluice[msk-iam]'") from exc
    where = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not where:
        raise ValueError("msk_iam needs SLUICE_KAFKA_AWS_REGION (or AWS_REGION)")

    def source() -> tuple[str, float]:
        token, expiry_ms = MSKAuthTokenProvider.generate_auth_token(where)
        return token, expiry_ms / 1000  # the signer counts milliseconds, librdkafka seconds

    return source


# -- refusals ------------------------------------------------------------------------------
REFUSALS = frozenset({
    KafkaError._SSL, KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED, KafkaError.ILLEGAL_SASL_STATE,
    KafkaError.UNSUPPORTED_SASL_MECHANISM,
})
AFTER = re.compile(r" \(after \d+ms in state \w+\)")
RECENT_S = 30.0  # a refusal counts for /readyz this long after it was last seen
LOG_EVERY_S = 60.0


def _hint(err: KafkaError) -> str:
    code = err.code()
    if code == KafkaError._SSL:
        return "check SLUICE_KAFKA_SSL_CA_LOCATION and the broker's certificate"
    if code in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED,
                KafkaError.CLUSTER_AUTHORIZATION_FAILED):
        return "the user lacks an ACL on the cluster"
    return "check SLUICE_KAFKA_SASL_MECHANISM, _USERNAME and _PASSWORD"


class KafkaRefused(RuntimeError):
    """The brokers refused this process (TLS or SASL): waiting will not help."""


class Refusals:
    """The last time a broker refused this process's clients, and why (per process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: tuple[float, str] | None = None
        self._logged: dict[str, float] = {}

    def note(self, err: KafkaError | None) -> None:
        """librdkafka's error_cb: keep and log (once a minute per reason) a refusal."""
        if err is None or err.code() not in REFUSALS:
            return
        said = AFTER.sub("", err.str())  # one reason however long the handshake took
        reason = f"Kafka refused this client: {said} ({_hint(err)})"
        now = time.monotonic()
        with self._lock:
            self._last = (now, reason)
            due = now - self._logged.get(reason, -LOG_EVERY_S) >= LOG_EVERY_S
            if due:
                self._logged[reason] = now
        if due:
            log.error("%s", reason)

    def recent(self, within_s: float = RECENT_S) -> str | None:
        with self._lock:
            last = self._last
        return last[1] if last and time.monotonic() - last[0] < within_s else None


REFUSED = Refusals()


def warn_if_unverified(settings: Settings) -> None:
    """Say loudly, at each role's start, that brokers' certificates are not checked."""
    if uses_tls(settings) and not settings.kafka_ssl_verify:
        log.warning("SLUICE_KAFKA_SSL_VERIFY=false: the Kafka brokers' certificates are NOT "
                    "verified; anyone on the path can read and change every event")


def describe(settings: Settings) -> str:
    """A line for banners and status, without secrets."""
    s = settings
    parts: list[str] = [s.kafka_security_protocol]
    if s.kafka_sasl_mechanism:
        who = s.kafka_sasl_username or s.kafka_sasl_oauth_provider or "oidc"
        parts.append(f"{s.kafka_sasl_mechanism} as {who}")
    if uses_tls(s) and not s.kafka_ssl_verify:
        parts.append("certificates NOT verified")
    return ", ".join(parts)
