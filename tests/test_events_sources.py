"""The built-in events dataset cites public sources a researcher can check: every row names a
publication with its date, or a URL (or both), and none points at the project's own notes."""

from __future__ import annotations

import re

from blockwatch.reports.events import load_events

PRIVATE = re.compile(r"seed|field-notes|field notes|\.txt\b", re.IGNORECASE)


def test_every_builtin_event_cites_a_public_source() -> None:
    events = load_events()
    assert len(events) >= 40
    for e in events:
        assert e.source.strip(), e.id
        assert e.source_date.strip() or e.reference.strip(), f"{e.id}: no date and no URL"
        if e.source_date:
            assert re.fullmatch(r"\d{4}(-\d\d){0,2}", e.source_date), e.id
        for part in e.reference.split(";"):
            assert not part.strip() or part.strip().startswith("https://"), e.id
        for text in (e.source, e.reference, e.notes):
            assert not PRIVATE.search(text), f"{e.id}: {text!r} is not a public source"


def test_the_builtin_events_reach_beyond_the_2014_china_seeds() -> None:
    by_id = {e.id: e for e in load_events()}
    for country, day in (("RU", "2024-08-09"), ("VE", "2024-08-08")):
        signal = by_id[f"{country.lower()}-2024-signal"]
        assert (signal.service, signal.country, signal.event, signal.date.isoformat()) == (
            "signal", country, "blocked", day)
    assert by_id["pk-2024-signal"].precision == "year"
    sni, dns = by_id["cn-2022-google-sni"], by_id["cn-2022-google-dns"]
    assert (sni.mechanism, dns.mechanism) == ("sni", "dns") and sni.date < dns.date
    assert {e.country for e in by_id.values()} >= {"CN", "RU", "VE", "PK", "IR"}
