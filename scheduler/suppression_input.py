"""Numbers for the do-not-call list as people give them (typed, or a file), shared by
`insight-scheduler suppress` and the console: normalised to E.164, or refused all at once
with each bad number named by its line."""

from __future__ import annotations

import csv
from pathlib import Path

from .config import Settings
from .errors import UserError


def normalised_numbers(raw_numbers: list[str], settings: Settings) -> list[str]:
    from .phones import Normaliser

    normalise = Normaliser(settings.contacts.default_region)
    numbers, problems = [], []
    for raw in raw_numbers:
        phone, reason = normalise(raw)
        if phone is None:
            problems.append(f"  {reason}")
        else:
            numbers.append(phone)
    if problems:
        raise UserError("nothing was added; fix these numbers first:\n" + "\n".join(problems))
    return numbers


def numbers_in_file(path: Path, settings: Settings, shown: str | None = None) -> list[str]:
    """A CSV file with a phone column, else a list of numbers one per line."""
    numbers = numbers_in_csv(path, settings, shown)
    return numbers_in_list(path, settings, shown) if numbers is None else numbers


def numbers_in_csv(path: Path, settings: Settings, shown: str | None = None) -> list[str] | None:
    """Every number of the phone column, or None when no column is named like one (a plain list)."""
    from .contacts import ContactsFileError, iter_contacts

    shown = shown or str(path)
    bad: dict[int, str] = {}
    numbers = []
    try:
        _, contacts = iter_contacts(path, settings.contacts.phone_columns, settings.contacts.default_region)
        for contact in contacts:
            if contact.phone is not None:
                numbers.append(contact.phone)
            elif contact.raw_phone.strip():  # a row without a number suppresses nothing
                bad[contact.row_number] = contact.reason or "not a valid phone number"
    except ContactsFileError as exc:
        if "no phone column" in str(exc):
            return None
        raise UserError("suppress import: " + str(exc).replace(f"contacts file {path}", shown, 1)
                        .replace(str(path), shown)) from None
    if bad:
        lines = _line_numbers(path, set(bad))
        _refuse_import(shown, [(_where(lines.get(row), row), reason) for row, reason in bad.items()], "")
    return numbers


def _line_numbers(path: Path, rows: set[int]) -> dict[int, int]:
    """Row number as iter_contacts counts rows (blank lines skipped) -> line of the file.

    iter_contacts refuses a row that spans lines, so line 1 is the header and
    every later line is one row or blank.
    """
    found: dict[int, int] = {}
    row = 0
    with path.open(encoding="utf-8-sig", newline="") as handle:
        for line_number, text in enumerate(handle, 1):
            if line_number == 1 or _is_blank(text):
                continue
            row += 1
            if row in rows:
                found[row] = line_number
    return found


def _where(line: int | None, row: int) -> str:
    return f"line {line}" if line else f"data row {row}"


def _is_blank(text: str) -> bool:
    cells = next(csv.reader([text]), [])
    return not cells or (len(cells) == 1 and not cells[0].strip())


def numbers_in_list(path: Path, settings: Settings, shown: str | None = None) -> list[str]:
    """One number per line; blank lines are skipped."""
    from .phones import Normaliser

    shown = shown or str(path)
    normalise = Normaliser(settings.contacts.default_region)
    numbers, bad = [], []
    try:
        with path.open(encoding="utf-8-sig") as handle:
            for line_number, text in enumerate(handle, 1):
                if not text.strip():
                    continue
                phone, reason = normalise(text.strip())
                if phone is None:
                    bad.append((f"line {line_number}", reason or "not a valid phone number"))
                else:
                    numbers.append(phone)
    except UnicodeDecodeError:
        raise UserError(f"suppress import: {shown} is not UTF-8 text; save it as UTF-8") from None
    columns = ", ".join(settings.contacts.phone_columns)
    _refuse_import(shown, bad, f"\n({shown} was read as a list of numbers, one per line, because its first line "
                               f"names no phone column: {columns})")
    return numbers


def _refuse_import(shown: str, bad: list[tuple[str, str]], note: str) -> None:
    """Every bad number at once, by its line in the file; nothing is added."""
    if bad:
        lines = "\n".join(f"  {where}: {reason}" for where, reason in bad)
        raise UserError(f"suppress import: nothing was added; fix these lines of {shown} first:\n{lines}{note}")


def added_message(added: int, given: int) -> str:
    return (f"{added} number(s) added to the suppression list ({given - added} already there); "
            "they are taken out of chunks not yet sent")


def removable_number(raw: str, settings: Settings) -> str:
    """The E.164 form of a number to take off the list, or why it cannot be one."""
    from .phones import Normaliser

    number, reason = Normaliser(settings.contacts.default_region)(raw)
    if number is None:
        detail = reason or ""
        if detail.startswith("not a valid phone number"):
            detail = f"read with contacts.default_region {settings.contacts.default_region}"
        raise UserError(f"cannot remove: {raw} is not a valid phone number ({detail}); "
                        "write it as `insight-scheduler suppress list` shows it")
    return number


def not_listed_message(number: str) -> str:
    return (f"cannot remove: {number} is not on the suppression list; "
            "`insight-scheduler suppress list` shows every number on it")
