"""Why a command failed, in plain words, and what to try: well-known causes first, the message otherwise.

The traceback is for the log; the console gets a reason a person can act on. Each matcher looks at
one exception of the chain (the error and what it was raised from) and names a cause it recognises.
Messages and the tracking URI are redacted (``components.secrets``) before they are shown or cut.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from components.secrets import redact_text, redact_uri

REASON_MAX_CHARS = 600
GENERIC_HINT = "Rerun with --verbose to see everything live, or read the log for the full traceback."


@dataclass(frozen=True)
class Explanation:
    reason: str
    hint: str


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def paragraph(text: str, limit: int = REASON_MAX_CHARS) -> str:
    """One paragraph: whitespace collapsed, cut at ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _message(error: BaseException) -> str:
    return redact_text(str(error)) or type(error).__name__


def _config_error(error: BaseException, tracking_uri: str) -> Explanation | None:
    try:
        from pydantic import ValidationError
    except ImportError:  # pragma: no cover -- pydantic is a dependency
        return None
    if not isinstance(error, ValidationError):
        return None
    problems = []
    for item in error.errors()[:4]:
        key = ".".join(str(part) for part in item.get("loc", ())) or "(top level)"
        if item.get("type") == "extra_forbidden":
            problems.append(f"{key} is not a known setting")
        else:
            problems.append(redact_text(f"{key}: {item.get('msg', 'invalid')} (got {item.get('input')!r})"))
    more = len(error.errors()) - len(problems)
    return Explanation(
        "The configuration is not valid: " + "; ".join(problems) + (f"; and {more} more" if more > 0 else "") + ".",
        "Fix that key in the recipe or in the key=value overrides; `align config` prints the resolved "
        "configuration and configs/embedded.yaml shows every section.",
    )


def _override_error(error: BaseException, tracking_uri: str) -> Explanation | None:
    message = _message(error)
    if isinstance(error, ValueError) and ("override" in message or message.startswith("recipe ")):
        return Explanation(paragraph(message), "Overrides are dotted key=value pairs, e.g. train.steps=100 seed=2.")
    return None


def _auth_token(error: BaseException, tracking_uri: str) -> Explanation | None:
    message = _message(error)
    if "AuthenticationError" not in message and "authentication token" not in message \
            and type(error).__name__ != "AuthenticationError":
        return None
    # Ray's own words, first sentence: which token source it tried (never the token itself).
    said = message.rsplit("AuthenticationError:", 1)[-1].strip()
    said = said.split(". ", 1)[0].rstrip(".") if said else ""
    return Explanation(
        paragraph("Ray's token authentication is on and no usable token was found, so the local Ray head could "
                  "not start or this process could not join it" + (f" (Ray says: {said})." if said else ".")),
        "Make RAY_AUTH_TOKEN_PATH name a readable file holding a token (create one with python3 -c \"import "
        "secrets;open('/tmp/tok','w').write(secrets.token_hex(32))\"), or set RAY_AUTH_TOKEN, then rerun.",
    )


def _ray_start(error: BaseException, tracking_uri: str) -> Explanation | None:
    message = _message(error)
    if "ray start" in message or "local Ray head did not listen" in message:
        detail = [line.strip() for line in message.splitlines() if line.strip()]
        last = detail[-1] if len(detail) > 1 else ""
        return Explanation(
            paragraph("The local Ray head could not be started" + (f": {last}" if last else f" ({message})")),
            "Run `align down` to clear what a half-started head left behind, check that the machine has free "
            "memory and ports, and rerun; the log has Ray's own output.",
        )
    if "Could not find any running Ray instance" in message or "Failed to connect to GCS" in message:
        return Explanation(
            paragraph(f"Could not connect to the Ray cluster: {message}"),
            "Check ray.address (or --address): with `local` the platform starts its own head; otherwise the "
            "cluster must be running and reachable (`ray status --address HOST:PORT`).",
        )
    return None


_PORT_IN_USE = re.compile(r"address already in use|port \d+ is (already )?in use|failed to bind", re.IGNORECASE)


def _port_in_use(error: BaseException, tracking_uri: str) -> Explanation | None:
    in_use = isinstance(error, OSError) and error.errno == errno.EADDRINUSE
    if not in_use and not _PORT_IN_USE.search(_message(error)):
        return None
    return Explanation(
        paragraph(f"A port the platform needs is already taken by another process: {_message(error)}"),
        "Another server may still hold it (an earlier `align run`'s serving: `align down` stops it), or "
        "choose another port, e.g. serve.port=8010.",
    )


_UNREACHABLE = ("Connection refused", "Max retries exceeded", "Failed to establish a new connection",
                "Name or service not known", "ConnectError", "ConnectTimeout")


def _server_unreachable(error: BaseException, tracking_uri: str) -> Explanation | None:
    message = _message(error)
    connection = isinstance(error, ConnectionError) or type(error).__name__ in ("ConnectError", "ConnectTimeout")
    if not connection and not any(text in message for text in _UNREACHABLE):
        return None
    if tracking_uri.startswith(("http://", "https://")):
        return Explanation(
            paragraph(f"The MLflow tracking server at {tracking_uri} could not be reached: {message}"),
            "Check that the server is running and that storage.tracking_uri names it (infra/mlflow/ starts "
            "one); leave storage.tracking_uri unset to use the local SQLite store instead.",
        )
    return Explanation(
        paragraph(f"A server the platform talks to could not be reached: {message}"),
        "Check the addresses in the recipe (S3 endpoint AWS_ENDPOINT_URL, ray.address, the serving port) "
        "and the network, then rerun.",
    )


def _missing_file(error: BaseException, tracking_uri: str) -> Explanation | None:
    if not isinstance(error, FileNotFoundError):
        return None
    return Explanation(
        paragraph(f"A file or folder it needs does not exist: {_message(error)}"),
        "Check the paths in the recipe and overrides (corpus sources, eval suites, --config); relative paths "
        "are read from the current directory.",
    )


def _incomplete_output(error: BaseException, tracking_uri: str) -> Explanation | None:
    if not isinstance(error, FileExistsError):
        return None
    return Explanation(paragraph(_message(error)), "Remove the folder it names (an interrupted earlier attempt) and rerun.")


def _evaluation_suite(error: BaseException, tracking_uri: str) -> Explanation | None:
    if type(error).__name__ != "SuiteError":
        return None
    return Explanation(paragraph(_message(error)), "Check that suite in eval.suites: its path, task and split.")


def _nothing_registered(error: BaseException, tracking_uri: str) -> Explanation | None:
    if not isinstance(error, LookupError) or isinstance(error, (KeyError, IndexError)):
        return None
    return Explanation(
        paragraph(_message(error)),
        "Train and register a model first (`align run`), or name one explicitly (--version, --run-id).",
    )


def _out_of_memory(error: BaseException, tracking_uri: str) -> Explanation | None:
    if not isinstance(error, MemoryError) and type(error).__name__ != "OutOfMemoryError":
        return None
    return Explanation(
        paragraph(f"The machine ran out of memory: {_message(error)}"),
        "Lower the batch sizes (train.global_batch_size, eval.batch_size, index.batch_size) or the number "
        "of Ray workers (train.num_workers), or free memory, then rerun.",
    )


_MATCHERS: tuple[Callable[[BaseException, str], Explanation | None], ...] = (
    _config_error, _override_error, _auth_token, _ray_start, _port_in_use, _server_unreachable,
    _missing_file, _incomplete_output, _evaluation_suite, _nothing_registered, _out_of_memory,
)


def explain(error: BaseException, tracking_uri: str = "") -> Explanation:
    """A plain reason and a hint for ``error``; ``tracking_uri`` names the tracking server when it matters."""
    tracking_uri = redact_uri(tracking_uri)
    for cause in _chain(error):
        for matcher in _MATCHERS:
            found = matcher(cause, tracking_uri)
            if found is not None:
                return Explanation(redact_text(found.reason), redact_text(found.hint))
    return Explanation(paragraph(f"{type(error).__name__}: {_gist(_message(error))}"), GENERIC_HINT)


_ERROR_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt|Exit)\b.*")


def _gist(message: str) -> str:
    """A long message's first line, plus the last ``SomethingError: ...`` line of a traceback inside it
    (a Ray worker's error arrives as its whole traceback)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if len(lines) <= 1:
        return message
    errors = [line for line in lines[1:] if _ERROR_LINE.match(line)]
    return f"{lines[0]} ... {errors[-1]}" if errors else lines[0]
