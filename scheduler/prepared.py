"""The send path's statements, compiled once and run on SQLite's own cursor.

Every request runs a dozen small statements (claim, answer). Through SQLAlchemy each cost
15-70 µs of Python (cache key, parameter processing, result wrapping) around 2-10 µs of
SQLite: most of the ledger thread's CPU per request (issue 15). A ``Prepared`` statement is
compiled by SQLAlchemy for SQLite once (the same SQL it would send), its parameters are put
in order and converted by the column types' own processors, and its rows come back as named
tuples converted the same way. On PostgreSQL (network round trips dominate there) it runs
through SQLAlchemy as before, so both dialects keep one definition of each statement.
"""

from __future__ import annotations

import sqlite3
from collections import namedtuple
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError, InvalidRequestError, MultipleResultsFound, NoResultFound, StatementError
from sqlalchemy.sql import Executable

Processor = Callable[[Any], Any] | None


@dataclass
class Rows:
    """What a prepared statement returned: its rows (attribute access by column name, like
    SQLAlchemy's)."""

    rows: Sequence[Any]

    def all(self) -> Sequence[Any]:
        return self.rows

    def first(self) -> Any:
        return self.rows[0] if self.rows else None

    def one(self) -> Any:
        if not self.rows:
            raise NoResultFound("No row was found when one was required")
        if len(self.rows) > 1:
            raise MultipleResultsFound("Multiple rows were found when exactly one was required")
        return self.rows[0]

    def scalar_one(self) -> Any:
        return self.one()[0]

    def scalar(self) -> Any:
        return self.rows[0][0] if self.rows else None

    def scalars(self) -> list[Any]:
        return [row[0] for row in self.rows]


class _Compiled:
    """One statement as SQLite gets it: the SQL (expanding ``IN`` lists rendered per length),
    each positional parameter's name, default and type processor, and the row maker."""

    def __init__(self, statement: Any, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        prefetch = [*getattr(compiled, "insert_prefetch", ()), *getattr(compiled, "update_prefetch", ())]
        if prefetch:  # SQLAlchemy fills these in Python at execution: this path would bind NULL
            raise ValueError(f"a prepared statement must set {', '.join(c.name for c in prefetch)} itself")
        self.sql: str = compiled.string
        self.slots: list[tuple[str, Any, Processor, bool]] = []
        self.required = set()
        for name in compiled.positiontup or ():
            bind = compiled.binds[name]
            if bind.required:
                self.required.add(name)
            # a literal's value is its default
            self.slots.append((name, bind.value, bind.type.bind_processor(dialect), bool(bind.expanding)))
        self._by_length: dict[tuple[int, ...], str] = {}
        self.lists = [name for name, _, _, expanding in self.slots if expanding]
        columns: list[Any] = list(getattr(statement, "selected_columns", None)
                                  or getattr(statement, "exported_columns", None) or ())
        self.row: Any = namedtuple("Row", [c.key or f"c{i}" for i, c in enumerate(columns)],  # type: ignore[misc]
                                   rename=True)
        self.readers: list[Processor] = [c.type.result_processor(dialect, None) for c in columns]
        self.convert = any(reader is not None for reader in self.readers)

    def bind(self, params: dict[str, Any]) -> tuple[str, list[Any]]:
        if not self.required.issubset(params):  # as SQLAlchemy: a missing value is an error, not NULL
            missing = ", ".join(sorted(self.required.difference(params)))
            message = f"A value is required for bind parameter {missing!r}"
            raise StatementError(message, self.sql, params, InvalidRequestError(message))
        values: list[Any] = []
        lengths: list[int] = []
        for name, default, processor, expanding in self.slots:
            value = params.get(name, default)
            if expanding:
                items = list(value)
                lengths.append(len(items))
                values += [processor(item) for item in items] if processor else items
            else:
                values.append(processor(value) if processor else value)
        return (self._expanded(tuple(lengths)) if lengths else self.sql), values

    def _expanded(self, lengths: tuple[int, ...]) -> str:
        sql = self._by_length.get(lengths)
        if sql is None:
            sql = self.sql
            for name, length in zip(self.lists, lengths):
                sql = sql.replace(f"__[POSTCOMPILE_{name}]", ", ".join("?" * length), 1)
            self._by_length[lengths] = sql
        return sql

    def rows(self, fetched: Sequence[Any]) -> list[Any]:
        make = self.row._make
        if not self.convert:
            return [make(row) for row in fetched]
        readers = self.readers
        return [make([reader(v) if reader else v for reader, v in zip(readers, row)]) for row in fetched]


class Prepared:
    """A statement run with ``run(conn, params)``; see the module's docstring. It is compiled
    once, without the parameters' keys: an INSERT or UPDATE names what it sets (``.values()``
    with bindparams), and every column SQLAlchemy would fill from a Python default must be set
    (else compiling refuses)."""

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._sqlite: _Compiled | None = None

    def _compiled(self, conn: Connection) -> _Compiled:
        if self._sqlite is None:
            self._sqlite = _Compiled(self.statement, conn.dialect)
        return self._sqlite

    def _through_sqlalchemy(self, conn: Connection, params: dict[str, Any]) -> Rows:
        result = conn.execute(self.statement, params)
        return Rows(result.all() if result.returns_rows else [])

    def run(self, conn: Connection, params: dict[str, Any] | None = None) -> Rows:
        params = params or {}
        if conn.dialect.name != "sqlite":
            return self._through_sqlalchemy(conn, params)
        compiled = self._compiled(conn)
        if compiled.lists and not all(params.get(name, True) for name in compiled.lists):
            return self._through_sqlalchemy(conn, params)  # an empty IN list: SQLAlchemy renders an empty set
        assert conn.in_transaction(), "the driver's cursor runs in autocommit outside a transaction"
        sql, values = compiled.bind(params)
        raw = conn.connection.dbapi_connection
        assert raw is not None
        cursor = raw.cursor()
        try:
            cursor.execute(sql, values)
            fetched = cursor.fetchall() if cursor.description is not None else []
            return Rows(compiled.rows(fetched))
        except sqlite3.Error as exc:
            # As SQLAlchemy would raise it (the repository turns these into DatabaseError).
            invalid = conn.dialect.is_disconnect(exc, raw, cursor)  # type: ignore[arg-type]
            if invalid:
                conn.invalidate(exc)
            raise DBAPIError.instance(sql, values, exc, sqlite3.Error, connection_invalidated=invalid,
                                      dialect=conn.dialect) from exc
        finally:
            cursor.close()
