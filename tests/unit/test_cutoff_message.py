"""A misaligned cutoff is refused with the nearest valid ones, in the ISO
form `lamina batch run --cutoff` takes, and in epoch ms."""

from __future__ import annotations

import pytest

from lamina.batch.tiles import CutoffError, check_cutoff
from lamina.schemas.card_views import CARD_VIEWS

DAY_MS = 86_400_000
JAN_10 = 1_767_225_600_000 + 9 * DAY_MS  # 2026-01-10T00:00Z


def test_aligned_cutoff_is_accepted() -> None:
    assert check_cutoff(CARD_VIEWS, JAN_10) == JAN_10


def test_misaligned_cutoff_names_the_nearest_valid_ones_in_iso_and_ms() -> None:
    with pytest.raises(CutoffError) as caught:
        check_cutoff(CARD_VIEWS, JAN_10 + 3_600_000)
    message = str(caught.value)
    assert "2026-01-10T01:00:00Z" in message
    assert f"use 2026-01-10T00:00:00Z ({JAN_10}) or 2026-01-11T00:00:00Z ({JAN_10 + DAY_MS})" \
        in message


@pytest.mark.parametrize("bad", [1.5, "2026-01-10", True, None])
def test_non_integer_cutoff_is_refused(bad: object) -> None:
    with pytest.raises(CutoffError, match="integer number of epoch ms"):
        check_cutoff(CARD_VIEWS, bad)  # type: ignore[arg-type]
