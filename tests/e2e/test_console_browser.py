"""The console in a real browser (Debian's Chromium driven by Playwright) against the real daemon
process and the simulator, on loopback only: sign in, create a campaign by uploading a CSV and
watch it reach completed with its progress moving (no reload), pause and resume another, and a
viewer sees no button. Screenshots are saved in the test's temporary directory."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import REPO_ROOT
from tests.e2e.test_console_cli import _wait_listening, free_port
from tests.support.harness import simulator, valid_numbers, write_contacts

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PASSWORD = "browser test password"
CONTACTS = 300


@pytest.fixture
def chromium():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the console's browser tests need Debian's Chromium "
                    "(apt-get install chromium chromium-driver; .ci/run installs it)")
    from playwright.async_api import async_playwright

    return async_playwright


async def browser_context(playwright, profile: Path):
    """A fresh profile per user: its own cookies."""
    return await playwright.chromium.launch_persistent_context(
        user_data_dir=str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS,
        viewport={"width": 1360, "height": 900})


def write_daemon_config(path: Path, db_url: str, base_url: str, console_port: int) -> Path:
    path.write_text("\n".join([
        "database:", f"  url: {db_url}",
        "insight:", f"  base_url: {base_url}", "  developer_key: right-key", "  timeout_seconds: 5",
        "submission:", "  chunk_size: 10", "  rate_limit_per_second: 8", "  max_concurrency: 2",
        "scheduler:", "  poll_interval_seconds: 0.3", "  shutdown_grace_seconds: 3",
        "console:", f"  listen: 127.0.0.1:{console_port}", "  refresh_seconds: 0.4",
    ]) + "\n")
    return path


async def run_cli(config: Path, *args: str, stdin: str | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scheduler", "--config", str(config), *args, cwd=config.parent,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=_env())
    out, err = await proc.communicate(stdin.encode() if stdin else b"")
    assert proc.returncode == 0, err.decode()
    return out.decode()


def _env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("INSIGHT_")}, "PYTHONPATH": str(REPO_ROOT)}


async def sign_in(page, base: str, name: str) -> None:
    await page.goto(f"{base}/console/")
    assert page.url.endswith("/console/login")  # no session: the sign-in page
    await page.fill("input[name=username]", name)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base}/console/")


async def test_console_in_a_browser(chromium, db_url, tmp_path):
    started = time.monotonic()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with simulator(latency_mean_seconds=0.05) as sim:
        config = write_daemon_config(tmp_path / "config.yaml", db_url, sim.base_url, port)
        for name, role in (("alice", "admin"), ("victor", "viewer")):
            await run_cli(config, "user", "add", name, "--role", role, "--password-stdin", stdin=PASSWORD + "\n")
        later = datetime.now(timezone.utc) + timedelta(days=1)
        other = write_contacts(tmp_path / "later.csv", valid_numbers(20, seed=9))
        await run_cli(config, "campaign", "create", "--name", "Tomorrow's survey", "--survey-id", "7",
                      "--instance-id", "1", "--contacts", str(other), "--start", later.isoformat(),
                      "--end", (later + timedelta(hours=2)).isoformat())
        log = (tmp_path / "daemon.log").open("wb")
        daemon = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "scheduler", "--config", str(config), "run", cwd=tmp_path, stdout=log,
            stderr=log, env=_env())
        try:
            async with aiohttp.ClientSession() as http:
                await _wait_listening(http, f"{base}/console/login")
            async with chromium() as playwright:
                await _admin_session(playwright, base, tmp_path, sim)
                await _viewer_session(playwright, base, tmp_path)
        finally:
            daemon.send_signal(signal.SIGTERM)
            await asyncio.wait_for(daemon.wait(), 30)
    _keep_screenshots(tmp_path)
    print(f"browser test: {time.monotonic() - started:.1f} s; screenshots in {tmp_path}")


async def _admin_session(playwright, base: str, tmp_path: Path, sim) -> None:
    context = await browser_context(playwright, tmp_path / "admin-profile")
    page = context.pages[0] if context.pages else await context.new_page()
    failed: list[str] = []
    page.on("console", lambda message: failed.append(message.text) if message.type == "error" else None)
    page.on("requestfailed", lambda request: failed.append(f"{request.url} failed"))
    await page.goto(f"{base}/console/")
    await page.wait_for_url(f"{base}/console/login")
    await page.fill("input[name=username]", "alice")
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base}/console/")
    campaign_id = await _create_campaign(page, base, tmp_path)
    progress = await _watch_until_completed(page)
    assert len(set(progress)) >= 3, progress  # it moved while we watched, without a reload
    assert progress[-1] == f"{CONTACTS} / {CONTACTS}"
    assert await page.evaluate("window.consoleMarker") == "set before watching"  # still the same page
    assert await page.locator("#rate-chart polyline.rate").count() == 1
    assert await page.locator("#rate-chart line.limit").count() == 1
    assert sim.stats()["numbers_queued_more_than_once"] == 0
    await page.screenshot(path=str(tmp_path / "campaign.png"), full_page=True)
    await _pause_and_resume(page, base)
    await page.goto(f"{base}/console/")
    await page.wait_for_selector(f"#campaign-{campaign_id} .badge.completed")
    await page.screenshot(path=str(tmp_path / "campaigns.png"), full_page=True)
    assert not failed, failed  # every script, style and request of the console loaded (CSP included)
    await context.close()


async def _create_campaign(page, base: str, tmp_path: Path) -> int:
    await page.click("text=New campaign")
    await page.wait_for_url(f"{base}/console/campaigns/new")
    now = datetime.now(timezone.utc)
    await page.fill("input[name=name]", "Winter NPS <b>2026</b>")
    await page.fill("input[name=survey_id]", "77")
    await page.fill("input[name=instance_id]", "3")
    await page.fill("input[name=start]", (now - timedelta(minutes=1)).isoformat(timespec="seconds"))
    await page.fill("input[name=end]", (now + timedelta(hours=2)).isoformat(timespec="seconds"))
    await page.set_input_files("input[name=contacts]", str(write_contacts(tmp_path / "winter.csv",
                                                                           valid_numbers(CONTACTS, seed=3))))
    await page.click("#create")
    await page.wait_for_load_state()
    assert "done=created" in page.url, (page.url, await page.content())
    assert await page.inner_text("#campaign-title") == "Winter NPS <b>2026</b>"  # shown as text, not markup
    return int(page.url.split("/campaigns/")[1].split("?")[0])


async def _watch_until_completed(page, timeout: float = 60) -> list[str]:
    await page.evaluate("window.consoleMarker = 'set before watching'")
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = await page.inner_text("#campaign-progress")
        if not seen or seen[-1] != text:
            seen.append(text)
        if await page.inner_text("#campaign-status") == "completed":
            await page.wait_for_selector("#ingestion-summary")
            seen.append(await page.inner_text("#campaign-progress"))
            return seen
        await asyncio.sleep(0.1)
    raise AssertionError(f"not completed within {timeout} s; progress seen: {seen}")


async def _pause_and_resume(page, base: str) -> None:
    await page.goto(f"{base}/console/")
    await page.click("text=Tomorrow's survey")
    await page.click("#pause")
    await page.wait_for_selector("#done-message")
    assert await page.inner_text("#campaign-status") == "paused"
    await page.click("#resume")
    await page.wait_for_selector("#pause")
    assert await page.inner_text("#campaign-status") == "scheduled"


async def _viewer_session(playwright, base: str, tmp_path: Path) -> None:
    context = await browser_context(playwright, tmp_path / "viewer-profile")
    page = context.pages[0] if context.pages else await context.new_page()
    await page.goto(f"{base}/console/")
    await page.fill("input[name=username]", "victor")
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base}/console/")
    assert await page.locator("text=New campaign").count() == 0
    for link in await page.locator("a.campaign-name").all():
        await link.click()
        await page.wait_for_selector("#campaign-status")
        assert await page.locator("main button").count() == 0  # no pause, resume, cancel, resend
        assert await page.locator("main form").count() == 0
        assert await page.locator("#export").count() == 1  # reading is allowed
        await page.go_back()
    await context.close()


def _keep_screenshots(tmp_path: Path) -> None:
    """INSIGHT_CONSOLE_SCREENSHOTS=DIR copies the two pictures the README shows."""
    target = os.environ.get("INSIGHT_CONSOLE_SCREENSHOTS")
    if target:
        for name in ("campaigns.png", "campaign.png"):
            shutil.copy(tmp_path / name, Path(target) / name)
