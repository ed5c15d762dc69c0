import pytest

from scheduler.config import Settings, apply_env_overrides, build_settings, load_settings
from scheduler.errors import ConfigError


def test_committed_example_config_is_valid_and_matches_defaults(tmp_path):
    from tests.conftest import REPO_ROOT

    settings = load_settings(str(REPO_ROOT / "config.yaml"), environ={})
    assert settings.database.url == "sqlite+aiosqlite:///campaigns.db"
    assert settings.submission.chunk_size == 1000
    assert settings.submission.rate_limit_per_second == 2.0
    assert settings.submission.retry.max_tries == 5
    assert settings.scheduler.poll_interval_seconds == 5


def test_every_problem_is_reported_with_its_key_path():
    raw = {
        "submission": {"chunk_size": 0, "rate_limit_per_second": 0, "bogus": 1, "retry": {"max_tries": 0}},
        "insight": {"timeout_seconds": "abc"},
        "nonsense": {},
    }
    with pytest.raises(ConfigError) as info:
        build_settings(raw)
    assert sorted(info.value.problems) == sorted(
        [
            "submission.chunk_size: must be >= 1",
            "submission.rate_limit_per_second: must be > 0.0",
            "submission.bogus: unknown key",
            "submission.retry.max_tries: must be >= 1",
            "insight.timeout_seconds: must be a number",
            "nonsense: unknown key",
        ]
    )


@pytest.mark.parametrize(
    "raw, problem",
    [
        ({"submission": {"max_concurrency": 0}}, "submission.max_concurrency: must be >= 1"),
        ({"submission": {"chunk_size": "ten"}}, "submission.chunk_size: must be an integer"),
        ({"scheduler": {"poll_interval_seconds": 0}}, "scheduler.poll_interval_seconds: must be > 0.0"),
        ({"logging": {"format": "xml"}}, "logging.format: must be one of 'plain' or 'json'"),
        (
            {"submission": {"retry": {"initial_backoff_seconds": 10, "max_backoff_seconds": 1}}},
            "submission.retry: max_backoff_seconds must be >= initial_backoff_seconds",
        ),
        ({"database": []}, "database: must be a mapping of keys"),
    ],
)
def test_single_problems(raw, problem):
    with pytest.raises(ConfigError) as info:
        build_settings(raw)
    assert info.value.problems == [problem]


def test_environment_overrides_any_key_with_its_type():
    env = {
        "INSIGHT_SCHEDULER__SUBMISSION__CHUNK_SIZE": "500",
        "INSIGHT_SCHEDULER__SUBMISSION__RETRY__MAX_TRIES": "9",
        "INSIGHT_SCHEDULER__DATABASE__URL": "postgresql+asyncpg://db/x",
        "INSIGHT_DEVELOPER_KEY": "k3y",
        "UNRELATED": "1",
    }
    settings = build_settings(apply_env_overrides({"submission": {"chunk_size": 10}}, env))
    assert settings.submission.chunk_size == 500
    assert settings.submission.retry.max_tries == 9
    assert settings.database.url == "postgresql+asyncpg://db/x"
    assert settings.insight.developer_key.get_secret_value() == "k3y"


def test_unknown_environment_key_is_reported_like_a_file_key():
    with pytest.raises(ConfigError) as info:
        build_settings(apply_env_overrides({}, {"INSIGHT_SCHEDULER__SUBMISSION__CHUNKSIZE": "5"}))
    assert info.value.problems == ["submission.chunksize: unknown key"]


def test_developer_key_never_appears_in_repr_or_errors():
    settings = build_settings({"insight": {"developer_key": "hunter2-secret"}})
    assert "hunter2-secret" not in repr(settings)
    assert "hunter2-secret" not in str(settings)
    assert "hunter2-secret" not in settings.model_dump_json()
    with pytest.raises(ConfigError) as info:
        build_settings({"insight": {"developer_key": "hunter2-secret", "timeout_seconds": -1}})
    assert "hunter2-secret" not in str(info.value)


def test_missing_default_file_uses_defaults_but_a_named_file_must_exist(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_settings(None, environ={}) == Settings()
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(str(tmp_path / "nope.yaml"), environ={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(None, environ={"INSIGHT_SCHEDULER_CONFIG": str(tmp_path / "nope.yaml")})


def test_yaml_that_is_not_a_mapping_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_settings(str(path), environ={})
    path.write_text("database: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(str(path), environ={})
