"""The Ray auth token of the embedded local head: the platform makes and owns it.

Ray 2.60 turns token authentication on, and ``ray start --head`` refuses to start without a token
(``RAY_AUTH_TOKEN``, a file named by ``RAY_AUTH_TOKEN_PATH``, or ``~/.ray/auth_token``). Depending on
whatever an earlier command left in the home folder is how the embedded default once worked only on
machines where somebody had run ``ray get-auth-token --generate``. So each state folder gets its own
random token (``<home>/ray/auth_token``, mode 0600, made on first use), and the head, its workers and
every client of it read that file through ``RAY_AUTH_TOKEN_PATH``.

A token the user supplies wins: ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH`` set in the environment.
``~/.ray/auth_token`` is not read for the local head: it is Ray's default for reaching clusters the
platform did not start (``ray.address: host:port``), where nothing here changes Ray's own lookup.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

TOKEN_FILE = "auth_token"
TOKEN_ENV, TOKEN_PATH_ENV = "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
# Set beside RAY_AUTH_TOKEN_PATH when the path is the platform's own: child processes inherit both, and
# a path we set must not later look like one the user supplied (a second state folder gets its own).
OWN_TOKEN_MARKER_ENV = "ALIGN_RAY_TOKEN_FROM_STATE"


def user_token_source(environ: dict[str, str] | None = None) -> str:
    """Which user-supplied token is in ``environ`` ("" when none): the env var's name (never the token)."""
    environ = os.environ if environ is None else environ
    if environ.get(TOKEN_ENV):
        return TOKEN_ENV
    path = environ.get(TOKEN_PATH_ENV, "")
    if path and path != environ.get(OWN_TOKEN_MARKER_ENV):
        return f"{TOKEN_PATH_ENV}={path}"
    return ""


def state_token_path(ray_state_dir: Path) -> Path:
    """The state folder's token file, created with a fresh random token (0600) if it does not exist.

    ``O_EXCL`` makes two processes starting at once agree on one token: the loser reads the winner's.
    """
    path = ray_state_dir / TOKEN_FILE
    ray_state_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if not path.read_text().strip():
            raise RuntimeError(f"{path} is empty: delete it (after `align down`) and a new token is made") from None
        return path
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))  # 256 bits, the same kind of token `ray get-auth-token` makes
    return path


def local_head_token_env(ray_state_dir: Path, recorded_source: str = "") -> dict[str, str]:
    """Environment entries that give a process the local head's token (empty: the user's own wins).

    ``recorded_source`` is how the running head was started (``head.json``): a head started with a
    user's token file keeps using that file when a later command is run without it.
    """
    if user_token_source():
        return {}
    if recorded_source.startswith(f"{TOKEN_PATH_ENV}="):
        path = recorded_source.split("=", 1)[1]
        return {TOKEN_PATH_ENV: path, OWN_TOKEN_MARKER_ENV: path}
    if recorded_source == TOKEN_ENV:
        raise RuntimeError(
            f"the local Ray head of this state folder was started with {TOKEN_ENV}, which is not set now: "
            f"set it to the same token, or stop the head (`align down`) and start again"
        )
    path = str(state_token_path(ray_state_dir))
    return {TOKEN_PATH_ENV: path, OWN_TOKEN_MARKER_ENV: path}
