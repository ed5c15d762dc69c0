"""The console's pure parts as tables: charts, origin and CSRF checks, cookie flags, config keys,
passwords."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest

from scheduler.config import build_settings, load_settings
from scheduler.console import auth, charts
from scheduler.console.passwords import hash_password, password_problem, verify_password
from scheduler.errors import ConfigError, UserError

T0 = datetime(2026, 12, 1, 14, 0, tzinfo=timezone.utc)


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.mark.parametrize("counts, max_buckets, rates, size", [
    ([], 120, [], 1),
    ([(at(0), 5)], 120, [5.0], 1),
    ([(at(0), 5), (at(2), 3)], 120, [5.0, 0.0, 3.0], 1),  # an empty second is a zero, not skipped
    ([(at(0), 4), (at(1), 4), (at(2), 4), (at(3), 2)], 2, [4.0, 3.0], 2),
    ([(at(0), 10), (at(299), 10)], 100, [10 / 3] + [0.0] * 98 + [10 / 3], 3),
])
def test_rate_series(counts, max_buckets, rates, size):
    points, bucket = charts.rate_series(counts, max_buckets)
    assert bucket == size
    assert [round(p.per_second, 6) for p in points] == [round(r, 6) for r in rates]
    assert len(points) <= max_buckets
    if points:
        assert points[0].at == T0 and points[1:2] == [p for p in points[1:2] if p.at == at(size)]


@pytest.mark.parametrize("value, ceiling", [(0, 1), (0.7, 1), (1, 1), (1.1, 2), (2.3, 2.5), (23, 25), (51, 100),
                                            (120, 200)])
def test_the_y_axis_ends_on_a_round_number(value, ceiling):
    assert charts._nice_ceiling(value) == ceiling


def test_the_rate_chart_draws_the_limit_above_the_line():
    points, size = charts.rate_series([(at(0), 2), (at(1), 5)])
    svg = str(charts.rate_chart(points, 5.0, size))
    limit_y = float(re.search(r'class="limit" x1="\d+" y1="([\d.]+)"', svg).group(1))
    ys = [float(pair.split(",")[1]) for pair in re.search(r'class="rate" points="([^"]+)"', svg).group(1).split()]
    assert min(ys) == pytest.approx(limit_y)  # 5/s is drawn at the limit's height (SVG y grows downwards)
    assert "limit 5/s" in svg and "no request yet" not in svg
    assert "no request yet" in str(charts.rate_chart([], 5.0, 1))


def test_bar_chart_labels_are_escaped():
    svg = str(charts.bar_chart({"<script>alert(1)</script>": 3, "accepted": 7}, 'a "title"'))
    assert "<script>" not in svg and "&lt;script&gt;alert(1)&lt;/script&gt;" in svg
    assert svg.index("accepted") < svg.index("&lt;script")  # longest bar first
    assert 'aria-label="a &quot;title&quot;"' in svg


@pytest.mark.parametrize("origin, host, foreign", [
    (None, "127.0.0.1:8080", False),  # no Origin (curl, old browsers): the token decides
    ("null", "127.0.0.1:8080", False),
    ("http://127.0.0.1:8080", "127.0.0.1:8080", False),
    ("https://console.example.com", "console.example.com", False),  # behind an https proxy
    ("http://127.0.0.1:8081", "127.0.0.1:8080", True),
    ("https://evil.example", "console.example.com", True),
    ("https://console.example.com.evil.example", "console.example.com", True),
])
def test_foreign_origin(origin, host, foreign):
    assert auth.foreign_origin(origin, host) is foreign


@pytest.mark.parametrize("given, ok", [("abc", True), ("abd", False), ("", False), (None, False), ("abcd", False)])
def test_csrf_compare(given, ok):
    assert auth.csrf_ok("abc", given) is ok


@pytest.mark.parametrize("secure", [False, True])
def test_cookie_flags(secure):
    options = auth.cookie_options(secure, 3600)
    assert options["httponly"] is True and options["samesite"] == "Strict" and options["path"] == "/console/"
    assert options.get("secure", False) is secure


def test_tokens_are_random_and_only_their_hash_is_kept():
    tokens = {auth.new_token() for _ in range(100)}
    assert len(tokens) == 100 and all(len(t) >= 43 for t in tokens)
    token = tokens.pop()
    assert auth.token_hash(token) != token and len(auth.token_hash(token)) == 64


@pytest.mark.parametrize("raw, problem", [
    ({"console": {"listen": "127.0.0.1:9000"}, "callbacks": {"listen": "127.0.0.1:9000"}},
     "console.listen: must differ from callbacks.listen (127.0.0.1:9000)"),
    ({"console": {"listen": "0.0.0.0:9000"}, "callbacks": {"listen": "127.0.0.1:9000"}},
     "console.listen: must differ from callbacks.listen (127.0.0.1:9000)"),
    ({"console": {"listen": "9000"}}, "console.listen: listen must be host:port"),
    ({"console": {"secure_cookie": "sometimes"}}, "console.secure_cookie: must be true or false (got 'sometimes')"),
    ({"console": {"refresh_seconds": 0}}, "console.refresh_seconds: must be >= 0.2 (got 0)"),
    ({"console": {"listn": "127.0.0.1:1"}}, "console.listn: unknown key (did you mean listen?)"),
])
def test_console_config_problems_name_their_key(raw, problem):
    with pytest.raises(ConfigError) as found:
        build_settings(raw)
    assert any(line.startswith(problem) for line in found.value.problems), found.value.problems


def test_console_config_defaults_and_environment():
    settings = build_settings({"console": {"listen": "127.0.0.1:0"}, "callbacks": {"listen": "localhost:0"}})
    assert settings.console.listen == "127.0.0.1:0" and settings.console.secure_cookie is False
    assert build_settings({}).console.listen is None  # unset by default: no console
    env = {"INSIGHT_SCHEDULER__CONSOLE__SECURE_COOKIE": "true",
           "INSIGHT_SCHEDULER__CONSOLE__LISTEN": "127.0.0.1:8443"}
    from_env = load_settings(environ=env)
    assert from_env.console.secure_cookie is True and from_env.console.listen == "127.0.0.1:8443"


def test_passwords():
    assert password_problem("short") == "the password must have at least 8 characters"
    with pytest.raises(UserError):
        hash_password("short")
    hashed = hash_password("long enough secret")
    assert hashed.startswith("$argon2id$") and "long enough secret" not in hashed
    assert verify_password(hashed, "long enough secret") is True
    assert verify_password(hashed, "long enough secreT") is False
    assert verify_password(None, "long enough secret") is False  # no such user: the same work, refused
    assert verify_password("not a hash", "long enough secret") is False
    assert verify_password(hashed, "x" * 5000) is False
