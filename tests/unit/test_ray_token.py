"""The local head's Ray token: made per state folder (0600), reused, and always beaten by the user's own."""

import stat

import pytest

from components.runtime import ray_token
from components.runtime.ray_token import (
    OWN_TOKEN_MARKER_ENV,
    TOKEN_ENV,
    TOKEN_PATH_ENV,
    local_head_token_env,
    state_token_path,
    user_token_source,
)


@pytest.fixture(autouse=True)
def no_inherited_token(monkeypatch):
    for name in (TOKEN_ENV, TOKEN_PATH_ENV, OWN_TOKEN_MARKER_ENV):
        monkeypatch.delenv(name, raising=False)


def test_a_state_folder_gets_its_own_private_random_token_once(tmp_path):
    path = state_token_path(tmp_path / "ray")
    token = path.read_text()
    assert len(token) == 64 and int(token, 16) >= 0  # 256 bits, hex
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert state_token_path(tmp_path / "ray").read_text() == token  # reused, not regenerated
    assert state_token_path(tmp_path / "other" / "ray").read_text() != token


def test_without_a_user_token_the_head_and_its_clients_read_the_state_folders_file(tmp_path):
    env = local_head_token_env(tmp_path / "ray")
    assert env[TOKEN_PATH_ENV] == str(tmp_path / "ray" / "auth_token") == env[OWN_TOKEN_MARKER_ENV]


def test_the_home_folders_token_is_not_what_the_local_head_depends_on(tmp_path, monkeypatch):
    """A ~/.ray/auth_token left by an earlier command neither helps nor gets in the way."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("f" * 64)
    monkeypatch.setenv("HOME", str(home))
    env = local_head_token_env(tmp_path / "state" / "ray")
    assert env[TOKEN_PATH_ENV].startswith(str(tmp_path / "state"))


@pytest.mark.parametrize("name", [TOKEN_ENV, TOKEN_PATH_ENV])
def test_a_token_the_user_supplies_wins(tmp_path, monkeypatch, name):
    monkeypatch.setenv(name, str(tmp_path / "mine") if name == TOKEN_PATH_ENV else "a" * 64)
    assert local_head_token_env(tmp_path / "ray") == {}
    assert not (tmp_path / "ray" / "auth_token").exists()
    assert user_token_source().startswith(name) and "a" * 64 not in user_token_source()  # never the secret


def test_a_path_the_platform_set_itself_is_not_mistaken_for_the_users(tmp_path, monkeypatch):
    monkeypatch.setenv(TOKEN_PATH_ENV, str(tmp_path / "a" / "auth_token"))
    monkeypatch.setenv(OWN_TOKEN_MARKER_ENV, str(tmp_path / "a" / "auth_token"))
    assert user_token_source() == ""
    assert local_head_token_env(tmp_path / "b" / "ray")[TOKEN_PATH_ENV] == str(tmp_path / "b" / "ray" / "auth_token")


def test_a_head_started_with_a_users_token_keeps_it(tmp_path):
    env = local_head_token_env(tmp_path / "ray", f"{TOKEN_PATH_ENV}=/secrets/ray-token")
    assert env[TOKEN_PATH_ENV] == "/secrets/ray-token"
    with pytest.raises(RuntimeError, match="RAY_AUTH_TOKEN.*align down"):
        local_head_token_env(tmp_path / "ray", TOKEN_ENV)


def test_an_empty_token_file_is_refused_with_the_fix(tmp_path):
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / ray_token.TOKEN_FILE).write_text("")
    with pytest.raises(RuntimeError, match="empty.*delete it"):
        state_token_path(tmp_path / "ray")
