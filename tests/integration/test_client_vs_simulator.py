"""The client against the simulator over real loopback HTTP: every row of the outcome table."""

from __future__ import annotations

import asyncio
import socket

import pytest

from scheduler.config import InsightSettings
from scheduler.insight import BulkQueueRequest, InsightClient
from scheduler.models import Outcome
from scheduler.simulator import InsightSimulator, SimulatorSettings

CSV = "phone_number,first_name,note\n+16175551234,Zoë,\"says \"\"hi\"\", twice\"\n+13125550000,Bo,\n".encode()
KEY = "k3y-secret"


@pytest.fixture
async def sim():
    simulator = InsightSimulator(SimulatorSettings(developer_key=KEY, hang_seconds=2.0, seed=1))
    await simulator.start()
    yield simulator
    await simulator.stop()


def settings_for(base_url: str, **overrides) -> InsightSettings:
    values = dict(base_url=base_url, developer_key=KEY, timeout_seconds=5, connect_timeout_seconds=1)
    values.update(overrides)
    return InsightSettings(**values)


def request(**overrides) -> BulkQueueRequest:
    fields = dict(survey_id="77", instance_id="3", csv_bytes=CSV, start_timestamp=1796130000,
                  end_timestamp=1796140800, max_attempts=3, reattempt_wait=600,
                  result_url="https://results.example/cb?x=1&y=2")
    fields.update(overrides)
    return BulkQueueRequest(**fields)


async def send(base_url: str, req: BulkQueueRequest | None = None, **settings):
    async with InsightClient(settings_for(base_url, **settings), max_concurrency=2) as client:
        return await client.bulk_queue(req or request())


async def test_the_simulator_receives_exactly_what_the_client_meant(sim):
    result = await send(sim.base_url)
    assert result.outcome is Outcome.ACCEPTED and result.status_code == 200
    (recorded,) = sim.requests
    assert (recorded.survey_id, recorded.instance_id) == ("77", "3")
    assert (recorded.username, recorded.password) == ("you@yourdomain.com", KEY)
    assert recorded.accept == "application/json"
    assert recorded.content_type.startswith("multipart/form-data")
    assert recorded.fields == {
        "start_timestamp": "1796130000",
        "end_timestamp": "1796140800",
        "max_attempts": "3",
        "reattempt_wait": "600",
        "result_url": "https://results.example/cb?x=1&y=2",
    }
    assert recorded.csv_filename == "contacts.csv"
    assert recorded.csv_content_type == "text/csv"
    assert recorded.csv_text.encode() == CSV
    assert recorded.numbers == ["+16175551234", "+13125550000"]


async def test_unset_fields_are_not_sent(sim):
    await send(sim.base_url, request(max_attempts=None, reattempt_wait=None, result_url=None, end_timestamp=None))
    assert sim.requests[0].fields == {"start_timestamp": "1796130000"}


@pytest.mark.parametrize("style", ["json", "xml", "doc"])
async def test_success_in_every_answer_form(sim, style):
    sim.settings.answer_style = style
    result = await send(sim.base_url)
    assert result.outcome is Outcome.ACCEPTED
    assert result.error is None


@pytest.mark.parametrize(
    "changes, outcome, code, error",
    [
        ({"fixed_status": 200, "fixed_body": "{'success':false,'error':'no'}"}, Outcome.REJECTED, 200, "no"),
        ({"reject_numbers": ["+13125550000"]}, Outcome.REJECTED, 400, "invalid phone number: +13125550000"),
        ({"developer_key": "other"}, Outcome.AUTH, 401, "authentication headers were invalid"),
        ({"fixed_status": 403, "fixed_body": '{"success":false,"error":"no permission"}'}, Outcome.AUTH, 403,
         "no permission"),
        ({"surveys": {"1": "1"}}, Outcome.CAMPAIGN_INVALID, 404, "survey was not found"),
        ({"surveys": {"77": "4"}}, Outcome.CAMPAIGN_INVALID, 409, "did not match the current deployment"),
        ({"expired_surveys": ["77"]}, Outcome.CAMPAIGN_INVALID, 409, "expired"),
        ({"fixed_status": 405}, Outcome.CLIENT_BUG, 405, "HTTP 405"),
        ({"fixed_status": 415}, Outcome.CLIENT_BUG, 415, "HTTP 415"),
        ({"fail_first": 1}, Outcome.RETRYABLE, 500, "database error"),
        ({"unavailable_rate": 1.0, "retry_after_seconds": 7}, Outcome.RETRYABLE, 503, "service unavailable"),
        ({"fixed_status": 429, "fixed_headers": {"Retry-After": "Tue, 01 Dec 2026 14:00:00 GMT"}},
         Outcome.RETRYABLE, 429, "HTTP 429"),
        ({"fixed_status": 502, "fixed_body": "<html>bad gateway</html>", "fixed_queues": True},
         Outcome.UNKNOWN, 502, "HTTP 502"),
        ({"fixed_status": 504}, Outcome.UNKNOWN, 504, "HTTP 504"),
        ({"fixed_status": 418, "fixed_body": "teapot"}, Outcome.REJECTED, 418, "HTTP 418"),
        ({"fixed_status": 507, "fixed_body": "full"}, Outcome.UNKNOWN, 507, "HTTP 507"),
        ({"fixed_status": 302, "fixed_headers": {"Location": "/elsewhere"}}, Outcome.CLIENT_BUG, 302, "HTTP 302"),
    ],
)
async def test_each_answer_maps_to_its_outcome(sim, changes, outcome, code, error):
    for name, value in changes.items():
        setattr(sim.settings, name, value)
    result = await send(sim.base_url)
    assert (result.outcome, result.status_code) == (outcome, code)
    assert error in (result.error or "")
    assert result.latency_seconds >= 0
    assert len(sim.requests) == 1  # never followed a redirect, never retried by itself


async def test_retry_after_is_read_from_503(sim):
    sim.settings.unavailable_rate, sim.settings.retry_after_seconds = 1.0, 7
    result = await send(sim.base_url)
    assert result.retry_after_seconds == 7.0
    assert sim.queued_numbers == {}


async def test_unparseable_body_keeps_an_excerpt_and_the_code_decides(sim):
    sim.settings.fixed_status, sim.settings.fixed_body = 500, "<h1>oops</h1>" + "x" * 5000
    result = await send(sim.base_url)
    assert result.outcome is Outcome.RETRYABLE
    assert result.excerpt.startswith("<h1>oops</h1>") and len(result.excerpt) <= 503


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_connection_refused_is_retryable_and_nothing_was_sent():
    result = await send(f"http://127.0.0.1:{_closed_port()}/api")
    assert result.outcome is Outcome.RETRYABLE and result.status_code is None
    assert result.error.startswith("not sent:")


async def test_dns_failure_is_retryable():
    result = await send("http://no-such-host.invalid/api")
    assert result.outcome is Outcome.RETRYABLE and result.status_code is None
    assert result.error.startswith("not sent:")


async def test_connect_timeout_is_retryable():
    # A listener that never accepts, with its backlog full: the next SYN is dropped.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        await asyncio.sleep(0.1)
        result = await send(f"http://127.0.0.1:{port}/api", connect_timeout_seconds=0.3, timeout_seconds=2)
    finally:
        for s in fillers:
            s.close()
        listener.close()
    assert result.outcome is Outcome.RETRYABLE, result
    assert "not sent" in result.error


async def test_read_timeout_after_sending_is_unknown_and_the_calls_were_queued(sim):
    sim.settings.hang_rate = 1.0
    result = await send(sim.base_url, timeout_seconds=0.5)
    assert result.outcome is Outcome.UNKNOWN and result.status_code is None
    assert result.error.startswith("outcome unknown")
    assert sim.stats()["contacts_queued"] == 2


async def test_connection_dropped_after_the_body_is_unknown(sim):
    sim.settings.drop_rate = 1.0
    result = await send(sim.base_url)
    assert result.outcome is Outcome.UNKNOWN and result.status_code is None
    assert sim.stats()["contacts_queued"] == 2


async def test_a_fresh_body_is_built_for_every_attempt(sim):
    sim.settings.fail_first = 1
    async with InsightClient(settings_for(sim.base_url), max_concurrency=1) as client:
        first = await client.bulk_queue(request())
        second = await client.bulk_queue(request())
    assert (first.outcome, second.outcome) == (Outcome.RETRYABLE, Outcome.ACCEPTED)
    assert sim.requests[0].csv_text == sim.requests[1].csv_text == CSV.decode()


async def test_on_sent_is_called_once_as_the_request_leaves_and_never_when_it_cannot(sim):
    """The dispatcher moves the account's rate schedule when a request leaves late: it learns
    the moment from on_sent (once per request, once it is written, before the answer)."""
    moments: list[tuple[str, int]] = []
    async with InsightClient(settings_for(sim.base_url), max_concurrency=2) as client:
        result = await client.bulk_queue(request(), lambda: moments.append(("sent", len(sim.requests))))
    assert result.outcome is Outcome.ACCEPTED
    assert moments == [("sent", 0)]  # once, before the simulator had the request
    async with InsightClient(settings_for(f"http://127.0.0.1:{_closed_port()}/api"), max_concurrency=1) as client:
        refused = await client.bulk_queue(request(), lambda: moments.append(("refused", 0)))
    assert refused.outcome is Outcome.RETRYABLE and moments == [("sent", 0)]
    async with InsightClient(settings_for(sim.base_url), max_concurrency=1) as client:
        boom = await client.bulk_queue(request(), lambda: 1 / 0)  # a bug in the callback is not the request's
    assert boom.outcome is Outcome.ACCEPTED


async def test_on_sent_comes_once_the_whole_request_is_in_the_kernel():
    """on_sent is the moment the request left: aiohttp (Python 3.11) writes it in a task of its
    own, which a busy loop runs late, so a call before that write would hide the lateness. A
    plain socket that never answers peeks at what had arrived when on_sent ran."""
    seen: list[bytes] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def peek() -> None:
            conn, _ = listener.accept()  # the handshake is done: the connection waits in the backlog
            with conn:
                seen.append(conn.recv(1 << 20, socket.MSG_PEEK | socket.MSG_DONTWAIT))

        base_url = f"http://127.0.0.1:{listener.getsockname()[1]}/api"
        async with InsightClient(settings_for(base_url, timeout_seconds=1), max_concurrency=1) as client:
            result = await client.bulk_queue(request(), peek)
    assert result.outcome is Outcome.UNKNOWN  # sent, never answered
    (data,) = seen
    assert data.startswith(b"POST /api/surveys/77/3/bulk_queue ")
    assert CSV in data and data.rstrip().endswith(b"--")  # the body's last boundary
