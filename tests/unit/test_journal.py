"""The journal: entries survive a round trip, done lines cancel them, a torn line is skipped."""

from __future__ import annotations

from datetime import datetime, timezone

from scheduler.insight import SubmitResult
from scheduler.journal import Journal, entry_to_json, journal_path, leftovers, pending_entries
from scheduler.config import Settings
from scheduler.ledger import ClaimedChunk, Slot
from scheduler.models import Outcome
from scheduler.retry import NextStep, Step

NOW = datetime(2026, 12, 3, 14, 0, tzinfo=timezone.utc)
CLAIM = ClaimedChunk(chunk_id=7, campaign_id=2, seq=3, attempt=1, contact_count=10, submission_id=9,
                     survey_id="77", instance_id="3", start_at=NOW, end_at=NOW, max_attempts=1, reattempt_wait=None,
                     result_url=None, contacts_header=None, window_start_at=NOW, worker="w", token=4,
                     outage_tries=1, slot=Slot(1796000000.5, 1796000000.25))
RESULT = SubmitResult(Outcome.ACCEPTED, 200, None, '{"success": true}', 0.12)


def test_an_entry_round_trips():
    line = entry_to_json("a", "record", CLAIM, NOW, RESULT, NextStep(Step.RETRY, NOW, "m", counted=False),
                         worker="w", rejection_limit=20, expired_at=None)
    [entry], torn = pending_entries(iter([line]))
    assert torn == 0
    assert entry["claim"] == CLAIM and entry["result"] == RESULT and entry["now"] == NOW
    assert entry["plan"] == NextStep(Step.RETRY, NOW, "m", counted=False) and entry["rejection_limit"] == 20


def test_done_lines_and_torn_lines():
    lines = [entry_to_json(i, "release", CLAIM, NOW) for i in "abc"]
    lines += ['{"done": "b"}', lines[0][: len(lines[0]) // 2]]  # a kill while writing the last line
    entries, torn = pending_entries(iter(lines))
    assert [e["id"] for e in entries] == ["a", "c"] and torn == 1


def test_the_file_is_locked_and_emptied_when_everything_is_written(tmp_path):
    base = tmp_path / "j"
    journal = Journal.open(base, "w1")
    second = Journal.open(base, "w 2")  # a second daemon on this host: its own sibling file
    assert journal.path == base and second.path == tmp_path / "j.w_2"
    journal.append("a", entry_to_json("a", "release", CLAIM, NOW))
    assert list(leftovers(base)) == []  # both held by live journals
    assert base.read_text().count("\n") == 1
    journal.mark_done("a")
    assert base.read_text() == ""
    journal.append("b", entry_to_json("b", "release", CLAIM, NOW))
    journal.close()
    second.close()
    found = list(leftovers(base))
    assert [path for path, _ in found] == [base]  # the empty sibling was removed at close
    for _, handle in found:
        handle.seek(0)
        assert [e["id"] for e in pending_entries(iter(handle.read().splitlines()))[0]] == ["b"]
        handle.close()


def test_default_path_is_beside_the_sqlite_file_or_in_the_working_directory(tmp_path):
    sqlite = Settings.model_validate({"database": {"url": f"sqlite+aiosqlite:///{tmp_path}/c.db"}})
    assert journal_path(sqlite) == tmp_path / "c.db.outcomes.journal"
    pg = Settings.model_validate({"database": {"url": "postgresql+asyncpg://u@h/db"}})
    assert str(journal_path(pg)) == "insight-scheduler.journal"
    given = Settings.model_validate({"scheduler": {"journal_path": "/var/x.journal"}})
    assert str(journal_path(given)) == "/var/x.journal"
