"""Who may call: API keys per program (see :mod:`services.gateway.keys`).

Two ways to present a key:

- ActionHub routes: ``Authorization: Bearer sk_<id>_<secret>``; the ``program-id`` header
  must name the key's program. ``POST /events``, ``PUT /assets``, ``DELETE /assets/{id}``
  need a ``write`` key; ``GET /events``, ``GET /assets/{id}``, ``GET /users/...`` a
  ``read`` key. A write key cannot read, a read key cannot write.
- The Amazon Personalize dialect: AWS Signature V4, as the AWS SDKs sign (service
  ``personalize``, any region): the signature is recomputed with botocore from the stored
  secret and compared; ``X-Amz-Date`` must lie within 15 minutes of the server's clock.

Rules: missing or malformed credentials, an unknown key, a wrong secret or signature, or a
revoked key -> 401 (ActionHub adds ``WWW-Authenticate: Bearer``); a good key of another
program, or of the wrong scope -> 403. With no keys file (``SLUICE_AUTH=auto``) or with
``SLUICE_AUTH=off`` the gateway is open and nothing is checked.

Order: credentials are checked before the request is validated, so an unauthenticated
caller learns nothing about what a valid request looks like: 401/403 come before 422 (or
Personalize's 400). One exception: a request with no ``program-id`` header at all has no
program to be refused for; a good key passes and the request gets its 422.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Literal

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.gateway.deps import GatewayDep
from services.gateway.keys import KeyRecord, KeyRing, KeysFileError
from services.shared.settings import Settings

if TYPE_CHECKING:
    from services.gateway.deps import Gateway

log = logging.getLogger(__name__)

SIGV4_SERVICE = "personalize"
MAX_CLOCK_SKEW = timedelta(minutes=15)
_SIGV4_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+),\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+),\s*Signature=(?P<signature>[0-9a-fA-F]{64})\s*$"
)


class AuthError(Exception):
    """401 (who are you?) or 403 (not for this); ``aws_type`` names the AWS error type
    the Personalize dialect answers with."""

    def __init__(self, status: int, message: str, aws_type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.aws_type = aws_type or ("AccessDeniedException" if status == 403
                                     else "UnrecognizedClientException")


def keyring_for(settings: Settings) -> KeyRing | None:
    """The gateway's KeyRing, or None when the gateway runs open."""
    if settings.auth == "off" or settings.keys_file is None:
        return None
    ring = KeyRing(settings.keys_file)
    ring.check_file()
    return ring


# -- the checks -------------------------------------------------------------------------
def authorize(record: KeyRecord, program_id: str | None, scope: Literal["write", "read"]) -> None:
    """403 unless ``record`` is a ``scope`` key of ``program_id`` (None: no program to check)."""
    if record.scope != scope:
        raise AuthError(403, f"API key {record.id} is a {record.scope!r} key; this needs a "
                        f"{scope!r} key of the program")
    if program_id is not None and record.program != program_id:
        raise AuthError(403, f"API key {record.id} belongs to another program than "
                        f"{program_id!r}")


def check_bearer(gateway: Gateway, authorization: str | None, program_id: str | None,
                 scope: Literal["write", "read"]) -> KeyRecord | None:
    """Raise AuthError unless ``authorization`` carries a live ``scope`` key of the program
    (``program_id`` None: of any program). Returns the key (None: the gateway runs open)."""
    ring = gateway.keys
    if ring is None:
        return None
    if not authorization or not authorization.strip():
        raise AuthError(401, "missing credentials: send 'Authorization: Bearer <API key>'")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise AuthError(401, "malformed Authorization header: expected 'Bearer <API key>'")
    record = ring.lookup_bearer(token)
    if record is None:
        raise AuthError(401, "invalid API key")
    if record.revoked:
        raise AuthError(401, f"API key {record.id} was revoked")
    authorize(record, program_id, scope)
    return record


def authenticate_sigv4(gateway: Gateway, request: Request, body: bytes) -> KeyRecord | None:
    """The live SigV4 key that signed this request (None: the gateway runs open); raises
    AuthError (401) for a missing, malformed, stale or wrong signature or an unknown or
    revoked key."""
    ring = gateway.keys
    if ring is None:
        return None
    header = request.headers.get("authorization")
    if not header:
        raise AuthError(401, "Missing Authentication Token",
                        "MissingAuthenticationTokenException")
    match = _SIGV4_AUTH.match(header.strip())
    if match is None:
        raise AuthError(401, "Authorization header is not a valid AWS Signature V4 "
                        "(AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...)",
                        "IncompleteSignatureException")
    parts = match["credential"].split("/")
    if len(parts) != 5 or parts[4] != "aws4_request":
        raise AuthError(401, "Credential must be <access key>/<date>/<region>/<service>/aws4_request",
                        "IncompleteSignatureException")
    access_key, scope_date, region, service, _ = parts
    amz_date = request.headers.get("x-amz-date", "")
    try:
        signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise AuthError(401, "X-Amz-Date header missing or not yyyyMMddTHHmmssZ",
                        "IncompleteSignatureException") from None
    now = datetime.now(UTC)
    if abs(now - signed_at) > MAX_CLOCK_SKEW:
        raise AuthError(401, f"Signature expired: {amz_date} is more than 15 minutes from the "
                        f"server's time {now:%Y%m%dT%H%M%SZ}", "InvalidSignatureException")
    if scope_date != amz_date[:8] or service != SIGV4_SERVICE or not region:
        raise AuthError(401, f"Credential should be scoped to {amz_date[:8]}/<region>/"
                        f"{SIGV4_SERVICE}/aws4_request", "InvalidSignatureException")
    signed = match["signed"].lower().split(";")
    if "x-amz-date" not in signed:
        raise AuthError(401, "SignedHeaders must include x-amz-date", "IncompleteSignatureException")
    record = ring.lookup_access_key(access_key)
    if record is None or record.revoked:
        raise AuthError(401, "The security token included in the request is invalid.",
                        "UnrecognizedClientException")
    content_sha = request.headers.get("x-amz-content-sha256")
    if content_sha is not None and content_sha.lower() != hashlib.sha256(body).hexdigest():
        raise AuthError(401, "X-Amz-Content-SHA256 does not match the body (the payload must "
                        "be signed)", "InvalidSignatureException")
    expected = _sigv4_signature(request, body, signed, record, region, amz_date)
    if not hmac.compare_digest(expected.encode(), match["signature"].lower().encode()):
        raise AuthError(401, "The request signature we calculated does not match the signature "
                        "you provided. Check your AWS Secret Access Key and signing method.",
                        "InvalidSignatureException")
    return record


def check_sigv4(gateway: Gateway, request: Request, body: bytes, program_id: str | None,
                scope: Literal["write", "read"] = "write") -> None:
    """Raise AuthError unless the request is SigV4-signed by a live ``scope`` key of the
    program (``program_id`` None: authenticate only)."""
    record = authenticate_sigv4(gateway, request, body)
    if record is not None:
        authorize(record, program_id, scope)


def _sigv4_signature(request: Request, body: bytes, signed: list[str], record: KeyRecord,
                     region: str, amz_date: str) -> str:
    """Rebuild the request as botocore saw it and sign it again with the stored secret.

    Only the headers the client listed in SignedHeaders take part (proxies and HTTP
    clients add others after signing), and the timestamp is the client's X-Amz-Date:
    botocore's ``add_auth`` would stamp the current time, so its steps are called
    one by one instead."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest, HTTPHeaders
    from botocore.credentials import Credentials

    class Verifier(SigV4Auth):
        def headers_to_sign(self, aws_request: AWSRequest) -> HTTPHeaders:
            chosen = HTTPHeaders()
            for name in signed:
                for value in aws_request.headers.get_all(name) or ():
                    chosen[name] = value
            return chosen

        def payload(self, aws_request: AWSRequest) -> str:
            return hashlib.sha256(body).hexdigest()

    raw_path = request.scope.get("raw_path") or request.url.path.encode()
    query = request.scope.get("query_string") or b""
    url = "http://sluice" + raw_path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
    aws_request = AWSRequest(method=request.method, url=url, data=body)
    for name, value in request.headers.items():
        if name.lower() in signed:
            aws_request.headers[name.lower()] = value
    aws_request.context["timestamp"] = amz_date
    signer = Verifier(Credentials(record.id, record.secret or ""), SIGV4_SERVICE, region)
    canonical = signer.canonical_request(aws_request)
    return str(signer.signature(signer.string_to_sign(aws_request, canonical), aws_request))


# -- FastAPI dependencies for the ActionHub routes ---------------------------------------
BEARER = HTTPBearer(  # also the dialects' (services.gateway.dialects.common), for /docs
    auto_error=False, scheme_name="APIKey",
    description="An API key of the program (`sk_<id>_<secret>`, from `sluice keys create`); "
    "required when the gateway runs with SLUICE_KEYS_FILE.",
)


def _require(scope: Literal["write", "read"]):  # type: ignore[no-untyped-def]
    async def require_key(
        request: Request,
        gateway: GatewayDep,
        _: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    ) -> None:
        try:
            check_bearer(gateway, request.headers.get("authorization"),
                         request.headers.get("program-id") or None, scope)
        except AuthError as exc:
            headers = {"WWW-Authenticate": 'Bearer realm="sluice"'} if exc.status == 401 else None
            raise HTTPException(exc.status, exc.message, headers=headers) from None

    return require_key


WriteKey = Annotated[None, Depends(_require("write"))]
ReadKey = Annotated[None, Depends(_require("read"))]


# -- start-up ---------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_auth_config(settings: Settings) -> None:
    """Called by ``sluice gateway`` and ``sluice up`` before serving: refuse to serve open on
    a non-loopback address, warn loudly when open on loopback, check the keys file."""
    host = settings.http_host
    if settings.auth == "off":
        log.warning("!!! running OPEN: SLUICE_AUTH=off, API keys are not checked: anyone who "
                    "reaches %s:%s can write and read every program's events !!!",
                    host, settings.http_port)
        return
    if settings.keys_file is None:
        if not is_loopback(host):
            raise SystemExit(
                f"sluice: refusing to start: the gateway would listen on {host} (not loopback) "
                "with no SLUICE_KEYS_FILE, so anyone who reaches it could write and read every "
                "program's events. Create keys (SLUICE_KEYS_FILE=/path/keys.json sluice keys "
                "create --program P --scope write) and set SLUICE_KEYS_FILE, or set "
                "SLUICE_AUTH=off to run open on purpose."
            )
        log.warning("!!! running OPEN: no SLUICE_KEYS_FILE, so every request is accepted without "
                    "an API key (acceptable on loopback %s only; set SLUICE_KEYS_FILE to require "
                    "keys) !!!", host)
        return
    try:
        ring = KeyRing(settings.keys_file)
    except (KeysFileError, OSError) as exc:
        raise SystemExit(f"sluice: refusing to start: bad SLUICE_KEYS_FILE: {exc}") from None
    live = [r for r in ring.records() if not r.revoked]
    log.info("API keys required: %d live keys for %d programs in %s", len(live),
             len({r.program for r in live}), settings.keys_file)
