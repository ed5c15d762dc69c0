"""The fast path gives exactly what the full phonenumbers pipeline gives.

CI runs a corpus of ~60k numbers; `INSIGHT_PHONE_CORPUS=1000000` runs a larger one.
"""

import os
import random

import phonenumbers
import pytest

from scheduler.phones import Normaliser, ZoneLookup, full_normalise

CORPUS_SIZE = int(os.environ.get("INSIGHT_PHONE_CORPUS", "60000"))

# Every area code any NANP region's metadata knows, plus the special ranges.
NANP_AREA_CODES = sorted(
    {f"{npa}" for npa in range(200, 1000)}
)
SHAPES = [
    "{n}", "1{n}", "+1{n}", "+1 {a} {b} {c}", "({a}) {b}-{c}", "{a}-{b}-{c}", "{a}.{b}.{c}", "1 ({a}) {b}-{c}",
    "+1-{a}-{b}-{c}", " {n} ", "1-{a}-{b}-{c}", "({a}){b}-{c}", "{a} {b} {c}", "+1({a}){b}{c}", "{a}{b} {c}",
]
ODD = ["", "  ", "12345", "0{n}", "11{n}", "+2{n}", "{n}0", "{n} x12", "{n};ext=1", "tel:+1{n}", "({a} {b}-{c}",
       "{a}-{b}-{c}.", "+1 ({a} {b} {c}", "1{n}1", "+{n}", "++1{n}", "{a}/{b}/{c}", "phone: {n}", "{a}-{b}-{c}-",
       "{a}-{b}-{c} ext. 12", "({a}) {b}-{c} #12", "{n}#1", "+1 {a} {b} {c} x 9", "tel:+1{n};ext=12", "{n} x"]


def corpus(size: int, seed: int = 2026):
    rand = random.Random(seed)
    for i in range(size):
        npa = rand.choice(NANP_AREA_CODES)
        # bias the exchange towards edge digits that patterns care about
        nxx = rand.choice([f"{rand.randint(0, 999):03d}", f"{rand.choice('0123456789')}{rand.choice('0159')}{rand.randint(0, 9)}"])
        line = f"{rand.randint(0, 9999):04d}"
        n = f"{npa}{nxx}{line}"
        shape = rand.choice(SHAPES if i % 5 else ODD)
        yield shape.format(n=n, a=npa, b=nxx, c=line)


@pytest.mark.parametrize("region", ["US", "CA"])
def test_fast_path_equals_full_pipeline_on_a_large_corpus(region):
    fast = Normaliser(region)
    mismatches = []
    used_fast = 0
    for raw in corpus(CORPUS_SIZE // 2):
        expected = full_normalise(raw, region)
        got = fast(raw)
        used_fast += fast._nanp_national(raw) is not None
        if got != expected:
            mismatches.append((raw, got, expected))
    assert mismatches == []
    assert used_fast > CORPUS_SIZE // 4  # the fast path really was exercised


def test_validity_does_not_depend_on_digits_after_the_cached_prefix():
    """For sampled 7-digit prefixes, every suffix gets the prefix's verdict."""
    rand = random.Random(7)
    for _ in range(400):
        prefix = f"{rand.randint(200, 999)}{rand.randint(0, 9999):04d}"
        verdicts = {
            phonenumbers.is_valid_number(phonenumbers.parse(prefix + f"{rand.randint(0, 999):03d}", "US"))
            for _ in range(25)
        }
        assert len(verdicts) == 1, prefix


def test_non_nanp_regions_use_the_full_pipeline():
    gb = Normaliser("GB")
    assert not gb.fast
    assert gb("020 7946 0958") == ("+442079460958", None)


def test_cached_time_zones_equal_phonenumbers_answer():
    """ZoneLookup caches per 7-digit prefix; every number gets phonenumbers' own answer."""
    lookup = ZoneLookup()
    fast = Normaliser("US")
    checked = 0
    for raw in corpus(CORPUS_SIZE // 4, seed=99):
        e164, _ = fast(raw)
        if e164 is None:
            continue
        assert lookup(e164) == ZoneLookup.lookup(e164), e164
        checked += 1
    assert checked > CORPUS_SIZE // 10
    assert lookup("+442079460000") == ("Europe/London",)
    assert lookup("+18005550100") == tuple(sorted(lookup("+18885550100")))  # toll-free: every NANP zone
    assert len(lookup("+18005550100")) > 20


def test_zones_cached_per_area_code_equal_phonenumbers_answer_for_every_exchange():
    """Cached per area code, except where the zone data splits one by exchange: every exchange
    of those area codes, and a few of every other, get phonenumbers' own answer."""
    from scheduler.phones import NANP_DEEP_AREAS

    assert {"208", "907", "850"} <= NANP_DEEP_AREAS and "212" not in NANP_DEEP_AREAS
    lookup, fast, checked = ZoneLookup(), Normaliser("US"), 0
    for area in range(200, 1000):
        exchanges = range(200, 1000) if f"{area}" in NANP_DEEP_AREAS else (200, 555, 734, 999)
        for exchange in exchanges:
            e164, _ = fast(f"+1{area}{exchange}0142")
            if e164 is not None:
                assert lookup(e164) == ZoneLookup.lookup(e164), e164
                checked += 1
    assert checked > 20_000


def test_ingestion_gives_each_contact_phonenumbers_zones(tmp_path):
    """Ingestion reads a contact's zones from the prefix the normaliser judged it with
    (NanpPrefix.zones): from a file of the corpus, each contact's chunk has exactly the
    zones phonenumbers gives its number, whichever number of a prefix came first."""
    from datetime import datetime, timedelta, timezone

    from scheduler.contacts import iter_contacts
    from scheduler.ingest import ChunkAssigner, WindowPlan
    from scheduler.windows import CallingRule, DailyWindow

    raws = list(corpus(CORPUS_SIZE // 10, seed=5)) + ["8005550100", "+44 20 7946 0958", "2085550100", "(212) 736-5000"]
    path = tmp_path / "contacts.csv"
    path.write_text("phone\n" + "".join(f'"{raw}"\n' for raw in raws), encoding="utf-8")
    normaliser = Normaliser("US")
    _, rows = iter_contacts(path, ["phone"], "US", normaliser)
    start = datetime(2026, 12, 7, tzinfo=timezone.utc)
    all_day = CallingRule(DailyWindow(0, 24 * 60))
    assigner = ChunkAssigner(3, WindowPlan(all_day, None, start, start, start + timedelta(days=2)),
                             zones=ZoneLookup(normaliser))
    batch = list(rows)
    assert sum(contact.prefix is not None for contact in batch) > len(raws) // 5
    new_chunks, contact_rows = assigner.assign(batch)
    zones_of_chunk = {seq: zones for seq, zones, _, _ in new_chunks}
    checked = 0
    for _, _, phone, _, status, _, seq in contact_rows:
        if status == "pending":
            assert zones_of_chunk[seq] == " ".join(ZoneLookup.lookup(phone)), phone
            checked += 1
        elif status == "out_of_window":
            assert ZoneLookup.lookup(phone) == (), phone
    assert checked > len(raws) // 5
