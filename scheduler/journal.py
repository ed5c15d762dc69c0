"""The local journal: answers from Plum that could not be written to the database yet.

An append-only file of JSON lines, fsynced on every entry, so a kill -9 while the
database is down loses nothing Plum answered. Each entry is one ledger write
(an outcome, or a claim given back unsent); a later ``{"done": id}`` line says it
reached the database. At start the daemon applies every entry without its done
line, in order, before it claims anything, then empties the file.

One process holds a journal file at a time (an exclusive ``flock``); a second
daemon on the same host with the same path writes ``PATH.<worker id>`` instead,
and whoever starts next applies every sibling whose holder is gone.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy.engine import make_url

from .config import Settings
from .errors import UserError
from .insight import SubmitResult
from .ledger import ClaimedChunk, Slot
from .models import Outcome
from .retry import NextStep, Step

log = logging.getLogger("scheduler.journal")

DEFAULT_NAME = "insight-scheduler.journal"
SQLITE_SUFFIX = ".outcomes.journal"  # not "-journal": that name is SQLite's own rollback journal


def journal_path(settings: Settings) -> Path:
    """scheduler.journal_path, else beside the SQLite file, else in the working directory."""
    if settings.scheduler.journal_path:
        return Path(settings.scheduler.journal_path)
    url = make_url(settings.database.url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return Path(url.database + SQLITE_SUFFIX)
    return Path(DEFAULT_NAME)


# -- entries as JSON (pure) ----------------------------------------------------------


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$t": value.isoformat()}
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value.value if isinstance(value, (Outcome, Step)) else value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$t"}:
            return datetime.fromisoformat(value["$t"])
        return {k: _decode(v) for k, v in value.items()}
    return value


def entry_to_json(entry_id: str, kind: str, claim: ClaimedChunk, now: datetime, result: SubmitResult | None = None,
                  plan: NextStep | None = None, **extra: Any) -> str:
    data = {"id": entry_id, "kind": kind, "claim": asdict(claim), "now": now,
            "result": asdict(result) if result is not None else None,
            "plan": asdict(plan) if plan is not None else None, **extra}
    return json.dumps(_encode(data), separators=(",", ":"))


def entry_from_json(text: str) -> dict[str, Any]:
    """The entry with its objects rebuilt (ValueError/KeyError/TypeError when it is not one)."""
    data: dict[str, Any] = _decode(json.loads(text))
    claim = data["claim"]
    if isinstance(claim.get("slot"), dict):
        claim["slot"] = Slot(**claim["slot"])
    data["claim"] = ClaimedChunk(**claim)
    if data.get("result") is not None:
        result = data["result"]
        data["result"] = SubmitResult(**{**result, "outcome": Outcome(result["outcome"])})
    if data.get("plan") is not None:
        plan = data["plan"]
        data["plan"] = NextStep(**{**plan, "step": Step(plan["step"])})
    return data


def pending_entries(lines: Iterator[str]) -> tuple[list[dict[str, Any]], int]:
    """Entries without a done line, in file order, and how many lines could not be read
    (a line torn by a kill during its write: its entry was never acknowledged)."""
    entries: dict[str, dict[str, Any]] = {}
    unreadable = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if "done" in data:
                entries.pop(str(data["done"]), None)
                continue
            entries[str(data["id"])] = entry_from_json(line)
        except (ValueError, KeyError, TypeError):
            unreadable += 1
    return list(entries.values()), unreadable


# -- the file ------------------------------------------------------------------------


class Journal:
    """The journal this process writes (held with an exclusive lock while it runs)."""

    def __init__(self, path: Path, handle: Any) -> None:
        self.path = path
        self._handle = handle
        self._open_entries: set[str] = set()

    @classmethod
    def open(cls, base: Path, worker: str) -> "Journal":
        for path in (base, base.with_name(f"{base.name}.{_safe(worker)}")):
            handle = _locked(path)
            if handle is not None:
                return cls(path, handle)
        raise UserError(f"scheduler.journal_path: {base} and its per-daemon sibling are held by other daemons; "
                        "give this daemon its own scheduler.journal_path")

    @property
    def open_entries(self) -> int:
        return len(self._open_entries)

    def append(self, entry_id: str, line: str) -> None:
        """Written and fsynced before this returns: from here a kill -9 loses nothing."""
        self._write(line)
        self._open_entries.add(entry_id)

    def mark_done(self, entry_id: str) -> None:
        if entry_id in self._open_entries:
            self._open_entries.discard(entry_id)
            self._write(json.dumps({"done": entry_id}))
        if not self._open_entries:
            self._handle.truncate(0)  # everything reached the database: start the file afresh

    def close(self) -> None:
        if self._handle is not None:
            if not self._open_entries and os.fstat(self._handle.fileno()).st_size == 0:
                self._handle.close()
                self.path.unlink(missing_ok=True)
            else:
                self._handle.close()
            self._handle = None

    def _write(self, line: str) -> None:
        self._handle.write(line + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())


def leftovers(base: Path) -> Iterator[tuple[Path, Any]]:
    """Journals of daemons that are gone (this one's and its siblings'), each locked for the caller."""
    candidates = [base, *sorted(base.parent.glob(f"{base.name}.*"))] if base.parent.exists() else []
    for path in candidates:
        if not path.is_file():
            continue
        handle = _locked(path)
        if handle is not None:
            yield path, handle


def _locked(path: Path) -> Any:
    """The file opened for appending with our exclusive lock, or None when a live process holds it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+", encoding="utf-8")
    except OSError as exc:
        raise UserError(f"scheduler.journal_path: cannot open {path}: {exc.strerror or exc}; "
                        "set scheduler.journal_path to a writable file") from None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _safe(worker: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in worker)
