"""Credentials are used, never recorded: one redaction, applied wherever the platform records a URI.

A tracking or store URI may carry a password (``postgresql://user:secret@host/db``) or a signed query
(``https://bucket.s3…/key?X-Amz-Signature=…``, ``?token=…``). The platform needs the real URI to connect,
but everything it *records* (MLflow params and artifacts, stage-cache keys and records, Prefect flow-run
parameters, console lines and logs) gets :func:`redact_uri`'s form instead, and child processes get the
secret through their environment, never their command line (:func:`components.runtime.local_server.start_server`).

Redaction is an identity on a URI that holds no secret, so hashes of redacted values (stage-cache keys)
are the same as before for such URIs, and do not change when only a password is rotated.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

REDACTED = "***"

# Query parameters whose value is a credential (compared lower-case, ``-`` read as ``_``): passwords,
# bearer/session tokens, API keys, and the signatures of pre-signed S3 / GCS / Azure URLs.
_SECRET_NAMES = frozenset({
    "password", "passwd", "pwd", "pass", "sslpassword", "secret", "client_secret", "token", "access_token",
    "refresh_token", "id_token", "auth", "auth_token", "api_key", "apikey", "key", "sig", "signature",
    "x_amz_signature", "x_amz_credential", "x_amz_security_token", "x_goog_signature", "x_goog_credential",
    "aws_secret_access_key", "aws_session_token", "sharedaccesssignature",
})
_SECRET_WORDS = ("password", "secret", "token", "signature", "credential")

# ``scheme://…`` inside free text: a URI ends at whitespace, a quote or a bracket.
_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")


def is_secret_name(name: str) -> bool:
    """Whether a query parameter (or setting) named ``name`` holds a credential."""
    key = unquote(name).strip().lower().replace("-", "_")
    return key in _SECRET_NAMES or any(word in key for word in _SECRET_WORDS)


def _redact_query(query: str) -> str:
    parts = []
    for item in query.split("&"):
        name, equals, value = item.partition("=")
        parts.append(f"{name}={REDACTED}" if equals and value and is_secret_name(name) else item)
    return "&".join(parts)


_USERNAME = re.compile(r"[^:/?#@]*:")  # a user name and the colon before its password


def _userinfo_end(rest: str) -> int:
    """Index of the '@' that ends ``user:password`` in ``rest`` (the URI after ``scheme://``), else -1.

    Lenient like SQLAlchemy's parser, because a password pasted into a URI often holds unencoded
    ``@ / ? # :``: the user info runs to the last '@' before the path that follows the first '@'. A
    ``host:port/path?q=a@b`` (an '@' in a path or query) is not user info.
    """
    user = _USERNAME.match(rest)
    if user is None:
        return -1
    first_at = rest.find("@", user.end())
    if first_at == -1:
        return -1
    slash = rest.find("/", first_at)
    end = rest.rfind("@", 0, slash if slash != -1 else len(rest))
    password = rest[user.end():end]
    head = re.split(r"[/?#]", password, maxsplit=1)
    if not password or (len(head) > 1 and head[0].isdigit()):
        return -1
    return end


def redact_uri(uri: str) -> str:
    """``uri`` without its secrets: ``user:password@`` becomes ``user:***@`` and the values of secret query
    parameters (``password=``, ``token=``, ``X-Amz-Signature=``, ...) become ``***``. A URI that holds no
    secret, and anything that is not a ``scheme://`` URI, is returned unchanged, character for character."""
    if not isinstance(uri, str) or "://" not in uri:
        return uri
    scheme, _, rest = uri.partition("://")
    prefix = ""
    end = _userinfo_end(rest)
    if end != -1:
        prefix = rest[: rest.index(":")] + ":" + REDACTED + "@"
        rest = rest[end + 1 :]
    rest, hash_mark, fragment = rest.partition("#")
    rest, question, query = rest.partition("?")
    redacted = (f"{scheme}://{prefix}{rest}{question}{_redact_query(query) if question else ''}"
                f"{hash_mark}{_redact_query(fragment) if '=' in fragment else fragment}")
    return uri if redacted == uri else redacted


def redact_text(text: str) -> str:
    """``text`` (a log line, an error message, a ``key=value`` override) with every URI in it redacted."""
    if not isinstance(text, str) or "://" not in text:
        return text
    return _URI_IN_TEXT.sub(lambda match: redact_uri(match.group(0)), text)


def redact(value: Any) -> Any:
    """A copy of a JSON-like value (dicts, lists, tuples, strings) with every URI in every string redacted;
    other values (numbers, ``None``) come back as they are."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {key: redact(item) for key, item in value.items()}
    if isinstance(value, list):
        return [redact(item) for item in value]
    if isinstance(value, tuple):
        return tuple(redact(item) for item in value)
    return value


def contains_secret(text: str) -> bool:
    """Whether ``text`` holds a URI credential that :func:`redact_text` would remove."""
    return redact_text(text) != text
