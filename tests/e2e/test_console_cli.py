"""The console from outside: users made with the CLI, the daemon process serving the console on
its own port (never the callback port), the config check, and `demo --console`."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from datetime import datetime, timedelta, timezone

import aiohttp
import pytest

from tests.conftest import REPO_ROOT
from tests.support.harness import valid_numbers, write_contacts

PASSWORD = "a long enough password"
XSS = "<script>alert(1)</script>"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_user_commands(cli):
    added = cli("user", "add", "alice", "--role", "admin", "--password-stdin", input=PASSWORD + "\n")
    assert added.stdout.strip() == "user alice added (admin)"
    cli("user", "add", "victor", "--role", "viewer", "--password-stdin", input=PASSWORD + "\n")
    again = cli("user", "add", "alice", "--role", "viewer", "--password-stdin", input=PASSWORD + "\n", check=False)
    assert again.returncode == 2 and "user 'alice' exists" in again.stderr
    listed = cli("user", "list").stdout
    assert re.search(r"alice\s+.\s+admin", listed) and re.search(r"victor\s+.\s+viewer", listed)
    assert "argon2" not in listed and PASSWORD not in listed
    no_tty = cli("user", "add", "bob", "--role", "admin", check=False, input="")
    assert no_tty.returncode == 2 and "--password-stdin" in no_tty.stderr and "Traceback" not in no_tty.stderr
    short = cli("user", "add", "bob", "--role", "admin", "--password-stdin", input="short\n", check=False)
    assert short.returncode == 2 and "at least 8 characters" in short.stderr
    role = cli("user", "add", "bob", "--role", "root", "--password-stdin", input=PASSWORD, check=False)
    assert role.returncode == 2 and "invalid choice: 'root'" in role.stderr
    name = cli("user", "add", "bo b", "--role", "admin", "--password-stdin", input=PASSWORD, check=False)
    assert name.returncode == 2 and "user name 'bo b'" in name.stderr
    assert cli("user", "passwd", "alice", "--password-stdin", input="another password\n").returncode == 0
    assert cli("user", "remove", "victor").stdout.strip() == "user victor removed; their sessions are ended"
    gone = cli("user", "remove", "victor", check=False)
    assert gone.returncode == 2 and "no user named 'victor'" in gone.stderr
    assert "victor" not in cli("user", "list").stdout


def test_the_console_may_not_share_the_callback_port(cli):
    cli.config.write_text(cli.config.read_text() + "callbacks:\n  listen: 127.0.0.1:8123\n"
                                                   "console:\n  listen: 127.0.0.1:8123\n")
    result = cli("run", check=False, timeout=30)
    assert result.returncode == 2
    assert "console.listen: must differ from callbacks.listen (127.0.0.1:8123)" in result.stderr
    assert "Traceback" not in result.stderr
    bad = cli("run", check=False, timeout=30, INSIGHT_SCHEDULER__CONSOLE__SECURE_COOKIE="perhaps")
    assert bad.returncode == 2 and "console.secure_cookie" in bad.stderr


async def test_the_daemon_serves_the_console_on_its_own_port(cli, tmp_path):
    console_port, callback_port = free_port(), free_port()
    cli.config.write_text(cli.config.read_text() + f"callbacks:\n  listen: 127.0.0.1:{callback_port}\n"
                                                   f"console:\n  listen: 127.0.0.1:{console_port}\n"
                                                   "scheduler:\n  poll_interval_seconds: 0.5\n")
    cli("user", "add", "alice", "--role", "admin", "--password-stdin", input=PASSWORD + "\n")
    contacts = write_contacts(tmp_path / "c.csv", valid_numbers(5))
    later = datetime.now(timezone.utc) + timedelta(days=1)
    cli("campaign", "create", "--name", XSS, "--survey-id", "7", "--instance-id", "1", "--contacts", str(contacts),
        "--start", later.isoformat(), "--end", (later + timedelta(hours=1)).isoformat())
    log = (tmp_path / "daemon.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scheduler", "--config", str(cli.config), "run", cwd=tmp_path, stdout=log, stderr=log,
        env={**cli.env, "PYTHONPATH": str(REPO_ROOT)})
    try:
        base = f"http://127.0.0.1:{console_port}"
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            await _wait_listening(http, f"{base}/console/login")
            signed = await http.post(f"{base}/console/login", data={"username": "alice", "password": PASSWORD},
                                     allow_redirects=False)
            assert signed.status == 303
            page = await (await http.get(f"{base}/console/")).text()
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and XSS not in page
            for path in ("/console/", "/console/login"):
                other = await http.get(f"http://127.0.0.1:{callback_port}{path}", allow_redirects=False)
                assert other.status == 404, path  # Plum's port never serves the console
            assert (await http.get(f"http://127.0.0.1:{callback_port}/healthz")).status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert "web console at http://127.0.0.1:" in (tmp_path / "daemon.log").read_text()


async def _wait_listening(http: aiohttp.ClientSession, url: str, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            async with http.get(url) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        assert asyncio.get_running_loop().time() < deadline, f"{url} never answered"
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_demo_console_prints_the_url_and_credentials(tmp_path, db_url):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scheduler", "demo", "--console", "--contacts", "300", "--fail-rate", "0",
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("INSIGHT_")}, "PYTHONPATH": str(REPO_ROOT),
             "COLUMNS": "200"})
    lines: list[str] = []
    try:
        url = user = password = None
        while "stays open" not in "".join(lines):
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            assert line, "".join(lines)
            lines.append(line)
            found = re.search(r"web console: (http://127\.0\.0\.1:\d+/console/)\s+user (\S+)\s+password (\S+)", line)
            if found:
                url, user, password = found.groups()
        assert url and user == "admin" and len(password) >= 12
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            signed = await http.post(url + "login", data={"username": user, "password": password},
                                     allow_redirects=False)
            assert signed.status == 303
            page = await (await http.get(url)).text()
            assert "demo survey" in page and ("completed" in page)
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, "".join(lines) + rest.decode()
