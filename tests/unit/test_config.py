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
            "submission.chunk_size: must be >= 1 (got 0)",
            "submission.rate_limit_per_second: must be > 0.0 (got 0)",
            "submission.bogus: unknown key; remove it (known keys here: chunk_size, max_concurrency, "
            "rate_limit_per_second, rate_limit_margin_seconds, max_rejections_without_success, retry, outage)",
            "submission.retry.max_tries: must be >= 1 (got 0)",
            "insight.timeout_seconds: must be a number (got 'abc')",
            "nonsense: unknown key; remove it (known keys here: database, insight, submission, scheduler, "
            "contacts, callbacks, console, logging)",
        ]
    )


@pytest.mark.parametrize(
    "raw, problem",
    [
        ({"submission": {"max_concurrency": 0}}, "submission.max_concurrency: must be >= 1 (got 0)"),
        ({"submission": {"chunk_size": "ten"}}, "submission.chunk_size: must be an integer (got 'ten')"),
        ({"submission": {"chunk_sise": 5}}, "submission.chunk_sise: unknown key (did you mean chunk_size?)"),
        ({"scheduler": {"poll_interval_seconds": 0}}, "scheduler.poll_interval_seconds: must be > 0.0 (got 0)"),
        ({"logging": {"format": "xml"}}, "logging.format: must be one of 'plain' or 'json' (got 'xml')"),
        (
            {"submission": {"retry": {"initial_backoff_seconds": 10, "max_backoff_seconds": 1}}},
            "submission.retry: max_backoff_seconds (1.0) must be >= initial_backoff_seconds (10.0); "
            "raise the max or lower the initial backoff",
        ),
        (
            {"insight": {"reattempt_wait_min_seconds": 600, "reattempt_wait_max_seconds": 60}},
            "insight: reattempt_wait_max_seconds (60) must be >= reattempt_wait_min_seconds (600); "
            "raise the max or lower the min",
        ),
        (
            {"contacts": {"timezone_policy": "campaign"}},
            "contacts: campaign_timezone is required when timezone_policy is campaign; "
            "set campaign_timezone (e.g. America/Chicago) or use timezone_policy: recipient",
        ),
        (
            {"callbacks": {"listen": "8080"}},
            "callbacks: listen must be host:port, e.g. 127.0.0.1:8080 (port 0: any free port) (got '8080')",
        ),
        (
            {"callbacks": {"public_url": "https://cb.example"}},
            "callbacks: secret is required when public_url is set (it signs the callback URLs); "
            "set callbacks.secret or INSIGHT_CALLBACK_SECRET",
        ),
        ({"database": []}, "database: must be a mapping of keys"),
        ({"database": 5}, "database: must be a mapping of keys (got 5)"),
        # a database URL may hold a password, a developer key is one: neither is echoed
        ({"database": {"url": 5}}, "database.url: must be a string (in YAML, put it in quotes)"),
        ({"insight": {"developer_key": 12345}}, "insight.developer_key: must be a string (in YAML, put it in quotes)"),
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


def _load_problem(tmp_path, environ, config_text="database:\n  url: sqlite+aiosqlite:///x.db\n"):
    path = tmp_path / "ok.yaml"
    path.write_text(config_text)
    with pytest.raises(ConfigError) as info:
        load_settings(str(path), environ=environ)
    return str(info.value)


@pytest.mark.parametrize(
    "environ, message",
    [
        (
            {"INSIGHT_SCHEDULER__SUBMISSION__CHUNK_SIZE": "abc"},
            "submission.chunk_size (from environment variable INSIGHT_SCHEDULER__SUBMISSION__CHUNK_SIZE): "
            "must be an integer (got 'abc')",
        ),
        (
            {"INSIGHT_SCHEDULER__SUBMISSION__CHUNKSIZE": "5"},
            "submission.chunksize (from environment variable INSIGHT_SCHEDULER__SUBMISSION__CHUNKSIZE): "
            "unknown key (did you mean INSIGHT_SCHEDULER__SUBMISSION__CHUNK_SIZE?)",
        ),
        (
            {"INSIGHT_SCHEDULER__SUBMISSION": "5"},
            "submission (from environment variable INSIGHT_SCHEDULER__SUBMISSION): must be a mapping of keys (got '5')",
        ),
        (
            {"INSIGHT_SCHEDULER__CONTACTS__PHONE_COLUMNS": "tel"},
            "contacts.phone_columns (from environment variable INSIGHT_SCHEDULER__CONTACTS__PHONE_COLUMNS): "
            "must be a list (got 'tel'); an environment variable cannot set a list: set it in the config file",
        ),
    ],
)
def test_an_invalid_environment_override_names_the_variable_not_the_file(tmp_path, environ, message):
    assert _load_problem(tmp_path, environ) == f"invalid configuration (environment):\n  {message}"


def test_file_and_environment_problems_are_told_apart(tmp_path):
    text = _load_problem(
        tmp_path,
        {"INSIGHT_SCHEDULER__SUBMISSION__MAX_CONCURRENCY": "x",
         "INSIGHT_SCHEDULER__SUBMISSION__RETRY__MAX_BACKOFF_SECONDS": "0.5"},
        "submission:\n  chunk_size: 0\n",
    )
    assert text.startswith(f"invalid configuration ({tmp_path / 'ok.yaml'} and environment):\n")
    assert "  submission.chunk_size: must be >= 1 (got 0)\n" in text
    assert ("  submission.max_concurrency (from environment variable INSIGHT_SCHEDULER__SUBMISSION__MAX_CONCURRENCY): "
            "must be an integer (got 'x')") in text
    assert ("  submission.retry (set partly by environment variable "
            "INSIGHT_SCHEDULER__SUBMISSION__RETRY__MAX_BACKOFF_SECONDS): max_backoff_seconds (0.5)") in text


def test_secret_variables_are_named_but_never_shown(tmp_path):
    text = _load_problem(tmp_path, {"INSIGHT_CALLBACK_SECRET": "s3cr3t-value"}, "callbacks:\n  listen: nowhere\n")
    assert "callbacks (set partly by environment variable INSIGHT_CALLBACK_SECRET): listen must be host:port" in text
    assert "s3cr3t-value" not in text


def test_environment_text_is_read_by_the_type_of_its_key(tmp_path, monkeypatch):
    # As YAML, NO would be false and 007 the integer 7: both keys are strings.
    monkeypatch.chdir(tmp_path)
    env = {"INSIGHT_SCHEDULER__CONTACTS__DEFAULT_REGION": "NO", "INSIGHT_SCHEDULER__INSIGHT__USERNAME": "007",
           "INSIGHT_SCHEDULER__SUBMISSION__RATE_LIMIT_PER_SECOND": "2.5"}
    settings = load_settings(None, environ=env)
    assert settings.contacts.default_region == "NO"
    assert settings.insight.username == "007"
    assert settings.submission.rate_limit_per_second == 2.5


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
    with pytest.raises(ConfigError, match="cannot read .*nope.yaml: No such file or directory; check the path "
                                          "given by --config"):
        load_settings(str(tmp_path / "nope.yaml"), environ={})
    with pytest.raises(ConfigError, match="cannot read .*; check the path given by INSIGHT_SCHEDULER_CONFIG"):
        load_settings(None, environ={"INSIGHT_SCHEDULER_CONFIG": str(tmp_path / "nope.yaml")})


def test_yaml_that_is_not_a_mapping_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_settings(str(path), environ={})
    path.write_text("database: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(str(path), environ={})
