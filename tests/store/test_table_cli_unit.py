"""``runstream table`` renders start times without pandas, exactly as pandas would."""

from __future__ import annotations

import random

import pandas as pd
import pytest
from runstream_store.cli import TABLE_TIMEZONE, start_time_text

pytestmark = pytest.mark.unit


def test_start_time_text_equals_pandas() -> None:
    rng = random.Random(7)
    values = [rng.uniform(1.0e9, 1.9e9) for _ in range(5000)]
    values += [1.7e9, 1.7e9 + 0.5, 1699999999.9999999, 1700000000.123456, 1711846800.0]
    stamps = pd.to_datetime(pd.Series(values, dtype="float64"), unit="s", utc=True)
    for value, stamp in zip(values, stamps.dt.tz_convert(TABLE_TIMEZONE), strict=True):
        assert start_time_text(value) == (stamp.isoformat(), stamp.strftime("%Y-%m-%d %H:%M:%S"))
    assert start_time_text(None) is None
    assert start_time_text(float("nan")) is None
