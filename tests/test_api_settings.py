"""The API's configuration: the environment variables it reads and how it refuses bad ones.

No database, no Ray: ``Settings.from_env`` on plain mappings and files.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from api.settings import ENV_NAMES, ConfigError, Settings, parse_tokens


def test_env_names_are_the_deployment_contract() -> None:
    assert ENV_NAMES == ("KTG_STORAGE", "KTG_API_TOKENS", "KTG_API_TOKENS_FILE", "KTG_MAX_BODY_BYTES",
                         "KTG_DATA_DIR", "RAY_ADDRESS", "KTG_DATASETS_DIR", "KTG_MAX_TRIAL_EPOCHS",
                         "KTG_MAX_MODEL_PARAMS", "KTG_MAX_RUNNING_STUDIES")


def test_tokens_from_env_and_file(tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text("# rotated monthly\nteam-b:tok-b1\nteam-b:tok-b2, team_c:tok-c\n")
    s = Settings.from_env({"KTG_API_TOKENS": "team-a:tok-a", "KTG_API_TOKENS_FILE": str(token_file),
                           "KTG_STORAGE": "sqlite:///rel/studies.db", "KTG_DATA_DIR": str(tmp_path / "d")})
    assert dict(s.tokens) == {"tok-a": "team-a", "tok-b1": "team-b", "tok-b2": "team-b", "tok-c": "team_c"}
    assert s.tenant_of("tok-b2") == "team-b" and s.tenant_of("tok-b") is None and s.tenant_of("") is None
    assert s.storage == f"sqlite:///{Path('rel/studies.db').resolve()}"  # absolute: jobs run elsewhere
    assert s.max_body_bytes == 64 * 1024 and s.data_dir == tmp_path / "d" and s.ray_address is None
    assert s.datasets_dir is None and (s.max_trial_epochs, s.max_model_params) == (300_000, 40_000_000)


def test_datasets_folder_and_quotas_from_env(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    s = Settings.from_env({"KTG_API_TOKENS": "a:tok", "KTG_DATASETS_DIR": str(tmp_path / "link"),
                           "KTG_MAX_TRIAL_EPOCHS": "5_000", "KTG_MAX_MODEL_PARAMS": "1000000"})
    assert s.datasets_dir == tmp_path / "real"  # resolved once: confinement compares resolved paths
    assert (s.max_trial_epochs, s.max_model_params) == (5_000, 1_000_000)


@pytest.mark.parametrize(("env", "names"), [
    ({}, "KTG_API_TOKENS"),
    ({"KTG_API_TOKENS": "  , "}, "KTG_API_TOKENS"),
    ({"KTG_API_TOKENS": "alice"}, "KTG_API_TOKENS: entry 1 is not 'tenant:token'"),
    ({"KTG_API_TOKENS": "al ice:tok"}, "tenant 'al ice' must match"),
    ({"KTG_API_TOKENS": "a:tok,b:tok"}, "share a token"),
    ({"KTG_API_TOKENS_FILE": "/nonexistent/tokens"}, "KTG_API_TOKENS_FILE: cannot read /nonexistent/tokens"),
    ({"KTG_API_TOKENS": "a:tok", "KTG_MAX_BODY_BYTES": "lots"}, "KTG_MAX_BODY_BYTES: got 'lots'"),
    ({"KTG_API_TOKENS": "a:tok", "KTG_DATASETS_DIR": "/nonexistent/data"}, "KTG_DATASETS_DIR: /nonexistent/data"),
    ({"KTG_API_TOKENS": "a:tok", "KTG_MAX_TRIAL_EPOCHS": "0"}, "KTG_MAX_TRIAL_EPOCHS: got '0'"),
    ({"KTG_API_TOKENS": "a:tok", "KTG_MAX_MODEL_PARAMS": "1e9"}, "KTG_MAX_MODEL_PARAMS: got '1e9'"),
    ({"KTG_API_TOKENS": "a:tok", "KTG_MAX_RUNNING_STUDIES": "0"}, "KTG_MAX_RUNNING_STUDIES: got '0'"),
])
def test_bad_configuration_is_one_line_naming_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    assert names in str(err.value) and "\n" not in str(err.value)


def test_token_parsing_keeps_colons_in_tokens() -> None:
    assert parse_tokens("a:b:c", "X") == {"b:c": "a"}
