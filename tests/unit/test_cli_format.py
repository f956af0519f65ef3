"""Sizes and ages as `ollimg list` prints them (decimal units, like ollama)."""

from datetime import datetime, timedelta, timezone

import pytest

from ollimg.cli.format import ago, human_bytes


@pytest.mark.parametrize("n, text", [
    (0, "0 B"), (999, "999 B"), (1000, "1.0 KB"), (4_700_000_000, "4.7 GB"), (12_300_000_000, "12 GB"),
    (526_000_000, "526 MB"), (32_900_000_000_000, "33 TB"),
])
def test_human_bytes(n, text):
    assert human_bytes(n) == text


@pytest.mark.parametrize("seconds, text", [
    (0.2, "Less than a second ago"), (1, "1 second ago"), (59, "59 seconds ago"), (120, "2 minutes ago"),
    (3600, "1 hour ago"), (86400 * 3, "3 days ago"), (86400 * 14, "2 weeks ago"), (86400 * 400, "1 year ago"),
])
def test_ago(seconds, text):
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert ago(now - timedelta(seconds=seconds), now) == text
