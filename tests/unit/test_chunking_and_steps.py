import random
from datetime import datetime, timezone

import pytest

from hypothesis import given, settings, strategies as st

from scheduler.chunking import BodyBuilder, chunk_csv, format_number, halves, packed_chunk_csv
from scheduler.contacts import pack_extra
from scheduler.config import RetrySettings
from scheduler.contacts import ParsedContact
from scheduler.ingest import ChunkAssigner
from scheduler.models import Outcome
from scheduler.retry import Step, next_step


def test_chunk_csv_puts_the_phone_first_and_quotes_what_needs_it():
    data = chunk_csv("phone_number", ["name", "note"], [("+16172531000", ["Zoë", 'says "hi", ok'])])
    assert data.decode() == 'phone_number,name,note\n+16172531000,Zoë,"says ""hi"", ok"\n'


FIELD = st.text(alphabet=st.sampled_from(list('ab ,"\r\n\x1f\x1eé;\t\'')), max_size=6)


PHONE = st.sampled_from(["+16172531000", "+442071838750", ""])
# Each example's values use plain characters and at most one that csv or the packing treats
# specially, so both ways of writing a chunk (joined as text, or through csv) are exercised.
SPECIAL = st.sampled_from(["", ",", '"', "\r", "\n", "\x1f", "\x1e"])


@settings(max_examples=600, deadline=None)
@given(st.integers(0, 4), SPECIAL, st.data(), st.sampled_from(["e164", "tel", "digits"]),
       st.sampled_from(["name", 'a "b", c']))
def test_packed_rows_are_written_exactly_as_chunk_csv_writes_them(count, special, data, fmt, first_name):
    """Whether a chunk is joined as text (nothing to quote) or written by csv, its bytes are
    what csv writes from the unpacked values (header names too; an empty number alone quoted)."""
    field = st.one_of(FIELD, st.text(alphabet=st.sampled_from(list("ab é;\t'") + ([special] if special else [])),
                                     max_size=5))
    rows = data.draw(st.lists(st.tuples(PHONE, st.lists(field, min_size=count, max_size=count)), max_size=5))
    names = [first_name, *(f"c{i}" for i in range(1, count))][:count]
    packed = [(phone, pack_extra(values) if count else None) for phone, values in rows]
    assert packed_chunk_csv("phone_number", names, packed, fmt) == chunk_csv(
        "phone_number", names, rows, fmt)


def test_a_value_with_a_quote_alone_is_quoted():
    assert packed_chunk_csv("p", ["n"], [("+1", pack_extra(['say "hi"']))]) == b'p,n\n+1,"say ""hi"""\n'


@given(st.integers(1, 4), st.lists(st.tuples(st.integers(0, 5), st.text(max_size=6)), max_size=30))
@settings(max_examples=200, deadline=None)
def test_bodies_built_at_ingestion_are_each_chunks_csv(chunk_size, contacts):
    """Contacts arrive for chunks in any order (calling windows fill one chunk per time zone):
    every contact is in exactly one body, each body is packed_chunk_csv of its chunk's rows in
    arrival order, emitted as soon as the chunk is full, the rest at the end."""
    builder = BodyBuilder("phone_number", ["name"], "tel", chunk_size)
    expected: dict[int, list[tuple[str, str | None]]] = {}
    filled: dict[int, int] = {}  # per group: its chunks already full
    bodies = []
    for i, (group, name) in enumerate(contacts):
        seq = group * 100 + filled.get(group, 0)  # the group's open chunk
        row = (f"+1617253{i:04d}", pack_extra([name]))
        expected.setdefault(seq, []).append(row)
        got = builder.add([(seq, *row)])
        if got:
            [full] = got
            assert full[1] == chunk_size == len(expected[seq])
            bodies.append(full)
            filled[group] = filled.get(group, 0) + 1
        else:
            assert len(expected[seq]) < chunk_size
    bodies += builder.rest()
    built = {seq: (count, body) for seq, count, body in bodies}
    assert len(built) == len(bodies) and set(built) == set(expected)
    for seq, rows in expected.items():
        assert built[seq] == (len(rows), packed_chunk_csv("phone_number", ["name"], rows, "tel"))


@pytest.mark.parametrize("fmt, out", [("e164", "+16172531000"), ("tel", "tel:+16172531000"), ("digits", "16172531000")])
def test_number_formats(fmt, out):
    assert format_number("+16172531000", fmt) == out


@pytest.mark.parametrize("items, first, second", [([1], [1], []), ([1, 2], [1], [2]), ([1, 2, 3], [1, 2], [3])])
def test_halves(items, first, second):
    assert halves(items) == (first, second)


def contact(n, status="pending"):
    return ParsedContact(n, "x", "+1" if status != "invalid" else None, (), status)


def test_assigner_fills_chunks_in_file_order_skipping_invalid_rows():
    assigner = ChunkAssigner(chunk_size=2)
    chunks, rows = assigner.assign([contact(1), contact(2, "invalid"), contact(3), contact(4), contact(5, "duplicate")])
    assert chunks == [(0, None, None, None), (1, None, None, None)]
    assert [r[6] for r in rows] == [0, None, 0, 1, None]
    chunks, rows = assigner.assign([contact(6), contact(7)])
    assert chunks == [(2, None, None, None)]  # chunk 1 continues from the previous batch
    assert [r[6] for r in rows] == [1, 2]
    assert assigner.counts == {"total": 7, "pending": 5, "invalid": 1, "duplicate": 1, "out_of_window": 0}


NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)
POLICY = RetrySettings(max_tries=3)


@pytest.mark.parametrize(
    "outcome, code, attempt, contacts, step",
    [
        (Outcome.ACCEPTED, 200, 1, 10, Step.SUCCEEDED),
        (Outcome.RETRYABLE, 500, 1, 10, Step.RETRY),
        (Outcome.RETRYABLE, None, 2, 10, Step.RETRY),
        (Outcome.RETRYABLE, 503, 3, 10, Step.FAILED),
        (Outcome.REJECTED, 400, 1, 10, Step.SPLIT),
        (Outcome.REJECTED, 200, 1, 2, Step.SPLIT),
        (Outcome.REJECTED, 400, 1, 1, Step.REJECTED),
        (Outcome.AUTH, 401, 1, 10, Step.PAUSE_ACCOUNT),
        (Outcome.AUTH, 403, 1, 10, Step.PAUSE_CAMPAIGN),
        (Outcome.CAMPAIGN_INVALID, 404, 1, 10, Step.FAIL_CAMPAIGN),
        (Outcome.CAMPAIGN_INVALID, 409, 1, 10, Step.FAIL_CAMPAIGN),
        (Outcome.CLIENT_BUG, 415, 1, 10, Step.FAIL_CAMPAIGN),
        (Outcome.UNKNOWN, 502, 1, 10, Step.UNKNOWN),
        (Outcome.UNKNOWN, None, 1, 10, Step.UNKNOWN),
    ],
)
def test_next_step_for_every_outcome(outcome, code, attempt, contacts, step):
    plan = next_step(outcome, code, "msg", attempt, contacts, NOW, POLICY, random.Random(1))
    assert plan.step is step
    assert (plan.retry_at is not None) == (step is Step.RETRY)


def test_messages_name_the_code_and_what_to_do():
    plan = next_step(Outcome.AUTH, 401, "bad credentials", 1, 5, NOW, POLICY, random.Random(1))
    assert plan.message.startswith("HTTP 401 from Plum: bad credentials") and "developer_key" in plan.message
    gave_up = next_step(Outcome.RETRYABLE, 500, "database error", 3, 5, NOW, POLICY, random.Random(1))
    assert gave_up.message == "gave up after 3 attempts; last: HTTP 500 from Plum: database error"
