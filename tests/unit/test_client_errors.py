"""aioresponses: the client maps each exception and status to the right outcome."""

import asyncio

import aiohttp
import pytest
from aioresponses import aioresponses

from scheduler.config import InsightSettings
from scheduler.errors import InvalidRequest
from scheduler.insight import BulkQueueRequest, InsightClient
from scheduler.models import Outcome

BASE = "https://insight.example/api"
URL = f"{BASE}/surveys/1/2/bulk_queue"
REQUEST = BulkQueueRequest("1", "2", b"phone_number\n+16175551234\n", 100, 200, 1)


class _FinishedUpload:
    output_size = 0


class _CompatResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.x predates aiohttp 3.14's required ``stream_writer`` argument
    (pnuckowski/aioresponses#289); aiohttp 3.14 is a security release, so adapt here."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("stream_writer", _FinishedUpload())
        super().__init__(*args, **kwargs)


async def run(**mock_kwargs):
    async with InsightClient(InsightSettings(base_url=BASE), max_concurrency=1) as client:
        with aioresponses() as mocked:
            mocked.post(URL, response_class=_CompatResponse, **mock_kwargs)
            return await client.bulk_queue(REQUEST)


class _Key:
    ssl, host, port = True, "insight.example", 443


@pytest.mark.parametrize(
    "exception, outcome",
    [
        (aiohttp.ClientConnectorError(_Key(), OSError(111, "Connection refused")), Outcome.RETRYABLE),
        (aiohttp.ConnectionTimeoutError("connect timed out"), Outcome.RETRYABLE),
        (asyncio.TimeoutError(), Outcome.UNKNOWN),
        (aiohttp.ServerDisconnectedError(), Outcome.UNKNOWN),
        (aiohttp.ClientPayloadError("truncated"), Outcome.UNKNOWN),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), Outcome.UNKNOWN),
        (aiohttp.SocketTimeoutError("read timed out"), Outcome.UNKNOWN),
        (ConnectionResetError(104, "reset"), Outcome.UNKNOWN),
        (RuntimeError("surprise"), Outcome.UNKNOWN),
    ],
)
async def test_exceptions_become_outcomes_never_raise(exception, outcome):
    result = await run(exception=exception)
    assert result.outcome is outcome
    assert result.status_code is None
    assert result.error


@pytest.mark.parametrize(
    "status, body, outcome",
    [
        (200, "{'success':true}", Outcome.ACCEPTED),
        (200, '{"success": false, "error": "bad csv"}', Outcome.REJECTED),
        (400, "<result><success>false</success><error>bad</error></result>", Outcome.REJECTED),
        (401, "", Outcome.AUTH),
        (403, "", Outcome.AUTH),
        (404, "", Outcome.CAMPAIGN_INVALID),
        (409, "{'success':false,'error':'survey deployment has expired'}", Outcome.CAMPAIGN_INVALID),
        (405, "", Outcome.CLIENT_BUG),
        (415, "", Outcome.CLIENT_BUG),
        (429, "", Outcome.RETRYABLE),
        (500, "", Outcome.RETRYABLE),
        (503, "", Outcome.RETRYABLE),
        (502, "", Outcome.UNKNOWN),
        (504, "", Outcome.UNKNOWN),
    ],
)
async def test_status_codes(status, body, outcome):
    result = await run(status=status, body=body)
    assert (result.outcome, result.status_code) == (outcome, status)


async def test_plum_error_message_is_kept():
    result = await run(status=409, body="{'success':false,'error':'survey deployment has expired'}")
    assert result.error == "survey deployment has expired"


async def test_invalid_request_is_refused_before_sending():
    async with InsightClient(InsightSettings(base_url=BASE), max_concurrency=1) as client:
        with aioresponses() as mocked:
            with pytest.raises(InvalidRequest, match="max_attempts"):
                await client.bulk_queue(BulkQueueRequest("1", "2", b"phone_number\n1\n", 100, 200, 11))
            assert not mocked.requests


async def test_developer_key_not_in_repr_of_client_settings():
    client = InsightClient(InsightSettings(developer_key="sekrit-value"), max_concurrency=1)
    assert "sekrit-value" not in repr(client.settings)
