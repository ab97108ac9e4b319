"""AWS Signature Version 4 (header signing), written out with hmac and hashlib.

The four steps of AWS's documentation: a canonical request (method, canonical URI, canonical query,
canonical headers, signed header names, payload hash), the string to sign (algorithm, timestamp,
credential scope, hash of the canonical request), the signing key (HMAC chain of date, region,
service, "aws4_request" from "AWS4" + secret) and the signature. For every service but S3 the URI
path is encoded twice: the path as sent (each segment already percent-encoded, so a model id's
`:` is `%3A` and an ARN's `/` is `%2F`) is percent-encoded again (`%253A`, `%252F`).

The same functions verify a signature (meshgate/testing/fake_bedrock.py recomputes what it receives).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None


def uri_encode(value: str) -> str:
    """RFC 3986 percent-encoding as AWS wants it: everything but A-Z a-z 0-9 - _ . ~ (so `/` too)."""
    return quote(value, safe="-_.~")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_uri(raw_path: str) -> str:
    """The canonical URI of a path as sent on the wire (non-S3 services encode it once more)."""
    return quote(raw_path or "/", safe="/~")


def canonical_query(raw_query: str) -> str:
    """Parameters sorted by encoded name then value, each name and value encoded exactly once."""
    if not raw_query:
        return ""
    pairs = []
    for item in raw_query.split("&"):
        if not item:
            continue
        name, _, value = item.partition("=")
        pairs.append((_reencode(name), _reencode(value)))
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def _reencode(component: str) -> str:
    return uri_encode(unquote(component))


def _header_value(value: str) -> str:
    """Trimmed, with runs of spaces inside collapsed to one, as the canonical form wants."""
    return " ".join(value.strip().split())


def canonical_request(
    method: str, raw_path: str, raw_query: str, headers: dict[str, str], payload_hash: str
) -> tuple[str, str]:
    """The canonical request and its signed header names, signing every header given."""
    lowered = {name.lower(): _header_value(value) for name, value in headers.items()}
    names = sorted(lowered)
    signed = ";".join(names)
    lines = [
        method.upper(),
        canonical_uri(raw_path),
        canonical_query(raw_query),
        "".join(f"{name}:{lowered[name]}\n" for name in names),
        signed,
        payload_hash,
    ]
    return "\n".join(lines), signed


def scope(date: str, region: str, service: str) -> str:
    return f"{date}/{region}/{service}/aws4_request"


def string_to_sign(amz_date: str, credential_scope: str, canonical: str) -> str:
    return "\n".join([ALGORITHM, amz_date, credential_scope, sha256_hex(canonical.encode("utf-8"))])


def signing_key(secret_access_key: str, date: str, region: str, service: str) -> bytes:
    key = ("AWS4" + secret_access_key).encode("utf-8")
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
    return key


def signature(
    secret_access_key: str,
    region: str,
    service: str,
    amz_date: str,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: dict[str, str],
    payload_hash: str,
) -> tuple[str, str]:
    """(hex signature, signed header names) of a request whose `headers` are all signed."""
    canonical, signed = canonical_request(method, raw_path, raw_query, headers, payload_hash)
    date = amz_date[:8]
    to_sign = string_to_sign(amz_date, scope(date, region, service), canonical)
    key = signing_key(secret_access_key, date, region, service)
    return hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest(), signed


def host_of(url: str) -> str:
    """The Host header a client sends for `url`: the host, and the port unless it is the scheme's default."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return host if parts.port is None or parts.port == default else f"{host}:{parts.port}"


def amz_date(now: datetime.datetime | None = None) -> str:
    moment = now or datetime.datetime.now(datetime.UTC)
    return moment.astimezone(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")


@dataclass(frozen=True)
class SigV4Signer:
    """Signs requests for one service in one region with one set of credentials."""

    credentials: Credentials
    region: str
    service: str

    def headers(self, method: str, url: str, body: bytes, now: datetime.datetime | None = None) -> dict[str, str]:
        """The headers to send with the request: host, x-amz-date, x-amz-content-sha256,
        x-amz-security-token (with temporary credentials) and authorization, all but the last signed."""
        parts = urlsplit(url)
        timestamp = amz_date(now)
        signed_headers = {
            "host": host_of(url),
            "x-amz-date": timestamp,
            "x-amz-content-sha256": sha256_hex(body),
        }
        if self.credentials.session_token:
            signed_headers["x-amz-security-token"] = self.credentials.session_token
        hex_signature, signed = signature(
            self.credentials.secret_access_key,
            self.region,
            self.service,
            timestamp,
            method,
            parts.path,
            parts.query,
            signed_headers,
            signed_headers["x-amz-content-sha256"],
        )
        credential = f"{self.credentials.access_key_id}/{scope(timestamp[:8], self.region, self.service)}"
        return {
            **signed_headers,
            "authorization": f"{ALGORITHM} Credential={credential}, SignedHeaders={signed}, Signature={hex_signature}",
        }
