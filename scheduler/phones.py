"""Phone numbers to E.164: the full phonenumbers pipeline, and a fast path that
gives exactly the same answers for the common North American shapes.

The full pipeline (``parse`` + ``is_valid_number`` + ``format_number``) costs
~25 µs a number, most of a million-row ingestion. For a number written as 10
digits (optionally with a leading ``1`` or ``+1`` and the usual ``( ) - .``
and spaces) in a NANP region, parse can only produce country code 1 and those
10 digits, and validity is decided by Plum-independent metadata patterns that
look at the first digits only (area code, exchange, and for a few ranges one
digit more). So validity is cached per 7-digit prefix, computed once with the
full pipeline. ``tests/unit/test_phones.py`` checks fast == full on a large
generated corpus that includes every NANP area code and the edge ranges.
Anything else (an extension such as ``x12``, ``#12`` or ``;ext=12``
included) takes the full pipeline, which refuses extensions.
"""

from __future__ import annotations

import re
from functools import lru_cache

import phonenumbers
import phonenumbers.timezone
from phonenumbers.tzdata import TIMEZONE_DATA
from phonenumbers import NumberParseException, PhoneNumberFormat, PhoneNumberType

PREFIX_DIGITS = 7
# 10 national digits, area code and exchange not starting with 0/1 is NOT assumed:
# only the shape is matched here; validity comes from the full pipeline.
_NANP_SHAPE = re.compile(r"(?:\+?1)?([2-9]\d{9})")
_FORMATTING = str.maketrans("", "", " -.()\t")


def full_normalise(raw: str, region: str) -> tuple[str | None, str | None]:
    """(E.164, None) for a valid number, or (None, reason): phonenumbers, all the way."""
    text = raw.strip()
    if not text:
        return None, "no phone number"
    if text[:4].lower() == "tel:":
        # phonenumbers refuses most URI parameters; ext= is kept so that it is seen.
        number_part, *params = text[4:].split(";")
        text = number_part + "".join(";" + p for p in params if p[:4].lower() == "ext=")
    try:
        number = phonenumbers.parse(text, region)
    except NumberParseException as exc:
        return None, f"cannot parse {raw!r}: {exc._msg}"
    if not phonenumbers.is_valid_number(number):
        return None, f"not a valid phone number: {raw!r}"
    if number.extension:
        return None, extension_reason(number.extension)
    return phonenumbers.format_number(number, PhoneNumberFormat.E164), None


def extension_reason(extension: str) -> str:
    # Plum is sent the E.164 number alone: queuing the main number would drop the extension unseen.
    return (f"has an extension (x{extension}): Plum dials the main number only; "
            "put the extension in another column or remove it")


@lru_cache(maxsize=None)
def _is_nanp_region(region: str) -> bool:
    return phonenumbers.country_code_for_region(region) == 1


def warm_up(region: str) -> None:
    """Load phonenumbers' metadata now (on the main thread, at start-up): loading it
    the first time holds the GIL for tens of milliseconds, which would otherwise
    stall the event loop in the middle of the first ingestion."""
    full_normalise("+12127365000", region)
    # A number that is not valid in the US is tried against every NANP region.
    for nanp_region in phonenumbers.COUNTRY_CODE_TO_REGION_CODE[1]:
        phonenumbers.PhoneMetadata.metadata_for_region(nanp_region)
    phonenumbers.PhoneMetadata.metadata_for_region(region)


class Normaliser:
    """Normalises numbers for one default region, with the exact fast path."""

    def __init__(self, region: str) -> None:
        self.region = region
        self.fast = _is_nanp_region(region)
        self._prefixes: dict[str, NanpPrefix] = {}  # 7-digit national prefix -> what phonenumbers says of it

    def __call__(self, raw: str) -> tuple[str | None, str | None]:
        """(E.164, None) for a valid number, or (None, reason)."""
        return self.judge(raw)[:2]

    def judge(self, raw: str) -> tuple[str | None, str | None, NanpPrefix | None]:
        """As __call__, with the number's NanpPrefix when the fast path judged it."""
        if self.fast:
            national = self._nanp_national(raw)
            if national is not None:
                prefix = self.nanp_prefix(national)
                # is_valid_number() is exactly number_type() != UNKNOWN for these numbers (both
                # find the region and run the same type patterns).
                if prefix.number_type != PhoneNumberType.UNKNOWN:
                    return "+1" + national, None, prefix
                return None, f"not a valid phone number: {raw!r}", None
        return (*full_normalise(raw, self.region), None)

    @staticmethod
    def _nanp_national(raw: str) -> str | None:
        compact = raw.translate(_FORMATTING)
        if len(compact) > 12 or "(" in raw and raw.count("(") != raw.count(")"):
            return None
        match = _NANP_SHAPE.fullmatch(compact)
        return match.group(1) if match else None

    def nanp_type(self, national: str) -> int:
        """phonenumbers' type of a 10-digit NANP number, computed once per 7-digit prefix."""
        return self.nanp_prefix(national).number_type

    def nanp_prefix(self, national: str) -> NanpPrefix:
        """The NanpPrefix of a 10-digit NANP number, made once per 7-digit prefix."""
        key = national[:PREFIX_DIGITS]
        prefix = self._prefixes.get(key)
        if prefix is None:
            # parse() of these shapes yields exactly this object (the corpus test checks it).
            number = phonenumbers.PhoneNumber(country_code=1, national_number=int(national))
            prefix = self._prefixes[key] = NanpPrefix(phonenumbers.number_type(number))
        return prefix


class NanpPrefix:
    """What is known of the numbers of one 7-digit North American prefix: phonenumbers' type,
    and their time zones once a ZoneLookup has worked them out (a number's zones depend on its
    exchange and its type, both fixed by the prefix). Kept with the type so that ingestion
    finds a contact's zones without a second lookup in a table of ~100k prefixes."""

    __slots__ = ("number_type", "zones")

    def __init__(self, number_type: int) -> None:
        self.number_type = number_type
        self.zones: tuple[str, ...] | None = None


class ZoneLookup:
    """The IANA time zones a valid E.164 number may be in (``phonenumbers.timezone``).

    () when phonenumbers knows none. Several zones for one number (an area code
    across a zone line, a toll-free number) are all returned: the caller calls
    only when every one of them is inside its window. North American answers
    are cached per area code (per exchange where the data splits one) and number
    type; the type is the one the normaliser already worked out (it is most of
    the lookup's cost).
    """

    def __init__(self, normaliser: Normaliser | None = None) -> None:
        self._normaliser = normaliser or Normaliser("US")
        self._nanp: dict[tuple[str, int], tuple[str, ...]] = {}  # (exchange, number type) -> zones

    def __call__(self, e164: str) -> tuple[str, ...]:
        if len(e164) != 12 or not e164.startswith("+1"):
            return self.lookup(e164)
        national = e164[2:]
        return self._nanp_cached(national, self._normaliser.nanp_type(national))

    def of_prefix(self, e164: str, prefix: NanpPrefix | None) -> tuple[str, ...]:
        """As __call__, for a number the normaliser judged with this prefix (Normaliser.judge)."""
        if prefix is None:
            return self(e164)
        zones = prefix.zones
        if zones is None:  # the prefix carries the type: no second lookup in the normaliser's table
            zones = prefix.zones = self._nanp_cached(e164[2:], prefix.number_type)
        return zones

    def _nanp_cached(self, national: str, number_type: int) -> tuple[str, ...]:
        # The zone data goes no deeper than the exchange (NANP_ZONE_DIGITS), and for all but a
        # few area codes no deeper than the area code; otherwise it depends on the number's
        # type, which the normaliser knows per 7-digit prefix. Per area code, a million-row
        # file asks phonenumbers ~1,000 times instead of ~100,000 (~0.5 s of the parser).
        depth = NANP_ZONE_DIGITS if national[:3] in NANP_DEEP_AREAS else 3
        key = (national[:depth], number_type)
        zones = self._nanp.get(key)
        if zones is None:
            zones = self._nanp[key] = self._nanp_zones(national, number_type)
        return zones

    @staticmethod
    def _nanp_zones(national: str, number_type: int) -> tuple[str, ...]:
        if number_type == PhoneNumberType.UNKNOWN:
            return ()
        number = phonenumbers.PhoneNumber(country_code=1, national_number=int(national))
        if not phonenumbers.is_number_type_geographical(number_type, 1):
            return _zones(phonenumbers.timezone.time_zones_for_number(number))  # toll-free and the like
        return _zones(phonenumbers.timezone.time_zones_for_geographical_number(number))

    @staticmethod
    def lookup(e164: str) -> tuple[str, ...]:
        """The full pipeline, uncached."""
        return _zones(phonenumbers.timezone.time_zones_for_number(phonenumbers.parse(e164)))


UNKNOWN_ZONES = ("Etc/Unknown",)
# The zone data's longest North American prefix, in national digits (area code and exchange):
# a geographic number's zones depend on no later digit.
NANP_ZONE_DIGITS = max(len(prefix) for prefix in TIMEZONE_DATA if prefix.startswith("1")) - 1
# The area codes whose zones the data splits by exchange (208: Idaho's two zones, ...).
NANP_DEEP_AREAS = frozenset(prefix[1:4] for prefix in TIMEZONE_DATA if prefix.startswith("1") and len(prefix) > 4)


def _zones(found: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    return () if tuple(found) == UNKNOWN_ZONES else tuple(sorted(found))
