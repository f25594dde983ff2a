"""The pure quota policy: every violation kind, eviction choice, expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from filekeeper.profiles import Limits
from filekeeper.quota import (
    Held,
    Request,
    Rules,
    Usage,
    choose_evictions,
    evaluate,
    expiry,
    file_format,
    unsupported,
)

NOW = datetime(2026, 11, 22, tzinfo=UTC)
LIMITS = Limits(max_files=10, max_total_bytes=1000, max_file_bytes=400, retention_days=30)
RULES = Rules(purposes=frozenset({"assistants"}), formats=frozenset({"txt", "pdf"}))


def kinds(violations: list) -> list[str]:
    return [v.limit for v in violations]


def test_everything_fits() -> None:
    assert evaluate(LIMITS, Usage(5, 500), [Request("a.txt", 100, "assistants")]) == []


def test_each_violation_kind() -> None:
    assert kinds(evaluate(LIMITS, Usage(10, 0), [Request("a.txt", 1, "assistants")])) == ["max_files"]
    [v] = evaluate(LIMITS, Usage(0, 950), [Request("a.txt", 100, "assistants")])
    assert (v.limit, v.current, v.requested, v.max) == ("max_total_bytes", 950, 100, 1000)
    assert "free 50 B" in v.message
    [v] = evaluate(LIMITS, Usage(0, 0), [Request("big.pdf", 401, "assistants")])
    assert (v.limit, v.requested, v.max) == ("max_file_bytes", 401, 400)
    [v] = evaluate(LIMITS, Usage(0, 0), [Request("a.txt", 1, "assistants")], ttl_seconds=31 * 86400)
    assert (v.limit, v.requested, v.max) == ("retention", 31 * 86400, 30 * 86400)


def test_files_are_judged_together() -> None:
    requests = [Request(f"{i}.txt", 300, "assistants") for i in range(4)]
    assert kinds(evaluate(LIMITS, Usage(7, 0), requests)) == ["max_files", "max_total_bytes"]


def test_no_limit_and_no_rules_mean_anything_goes() -> None:
    open_limits = Limits(None, None, None, 0)
    assert evaluate(open_limits, Usage(10**9, 10**15), [Request("x", 10**12, "anything")], 10**9) == []
    assert unsupported("p", Rules(), [Request("x", 1, "anything")]) is None


def test_a_purpose_or_format_the_provider_rejects_is_said_with_the_choices() -> None:
    why = unsupported("acme", RULES, [Request("a.txt", 1, "batch")])
    assert why == "acme does not take purpose 'batch': use one of assistants"
    assert "does not take .exe files: use one of pdf, txt" in (
        unsupported("acme", RULES, [Request("a.exe", 1, "assistants")]) or ""
    )
    assert "files without an extension" in (unsupported("acme", RULES, [Request("Makefile", 1, "assistants")]) or "")


def test_format_is_the_lowercase_extension() -> None:
    assert file_format("Report.PDF") == "pdf"
    assert file_format("archive.tar.gz") == "gz"
    assert file_format(".bashrc") == ""


def held(i: int, size: int = 100, age_days: int = 0, expires_in_days: int | None = None) -> Held:
    created = NOW - timedelta(days=age_days)
    expires = None if expires_in_days is None else NOW + timedelta(days=expires_in_days)
    return Held(i, f"file-{i}", f"{i}.txt", size, created, expires)


def test_evict_expired_takes_the_fewest_expired_files_earliest_expiry_first() -> None:
    files = [held(1, expires_in_days=-1), held(2, expires_in_days=-5), held(3, age_days=90), held(4, expires_in_days=2)]
    chosen = choose_evictions(LIMITS, Usage(10, 400), [Request("n.txt", 10, "assistants")], files, "expired", NOW)
    assert [h.ledger_id for h in chosen or []] == [2]
    two = [Request("n.txt", 10, "assistants"), Request("m.txt", 10, "assistants")]
    assert [h.ledger_id for h in choose_evictions(LIMITS, Usage(10, 400), two, files, "expired", NOW) or []] == [2, 1]
    three = [*two, Request("o.txt", 10, "assistants")]
    assert choose_evictions(LIMITS, Usage(10, 400), three, files, "expired", NOW) is None


def test_evict_oldest_frees_bytes_too() -> None:
    files = [held(1, size=300, age_days=1), held(2, size=100, age_days=9), held(3, size=200, age_days=5)]
    chosen = choose_evictions(LIMITS, Usage(3, 600), [Request("n.txt", 650, "assistants")], files, "oldest", NOW)
    # 600 + 650 > 1000: free 250, oldest first: #2 (100) is not enough, #3 (200) makes it
    assert [h.ledger_id for h in chosen or []] == [2, 3]


def test_nothing_to_evict_when_it_fits() -> None:
    assert choose_evictions(LIMITS, Usage(0, 0), [Request("n.txt", 1, "assistants")], [], "oldest", NOW) == []


def test_expiry() -> None:
    assert expiry(NOW, 3600, 180) == NOW + timedelta(hours=1)
    assert expiry(NOW, None, 180) == NOW + timedelta(days=180)
    assert expiry(NOW, None, 0) is None
