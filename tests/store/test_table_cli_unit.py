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


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"RUNSTREAM_POSTGRES_DSN": "postgresql://a@h:1/x"},
        {"RUNSTREAM_STORE_POSTGRES__DSN": "postgresql://b@h:2/y"},
        {"RUNSTREAM_STORE_POSTGRES__DSN": "postgresql://b@h:2/y", "RUNSTREAM_POSTGRES_DSN": "z"},
        {"runstream_postgres_dsn": "postgresql://lower@h:3/z"},
        {"RUNSTREAM_STORE_POSTGRES": '{"dsn": "postgresql://json@h:4/j"}'},
        {"RUNSTREAM_POSTGRES_DSN": "postgresql://a@h:1/x", "RUNSTREAM_POSTGRES_MAX_POOL": "9"},
    ],
)
def test_table_dsn_is_the_settings_dsn(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from runstream_store.cli import _dsn, dsn_from_environment
    from runstream_store.settings import Settings

    for key in list(os.environ):
        if key.upper().startswith(("RUNSTREAM_STORE_", "RUNSTREAM_POSTGRES")):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if not env:  # no default database: both say which variable to set
        from runstream_common.errors import ConfigurationError

        with pytest.raises(ConfigurationError, match="RUNSTREAM_POSTGRES_DSN"):
            _dsn(None)
        with pytest.raises(ConfigurationError, match="RUNSTREAM_POSTGRES_DSN"):
            Settings().postgres.dsn.get_secret_value()
    else:
        assert _dsn(None) == Settings().postgres.dsn.get_secret_value()
    assert _dsn("postgresql://flag@h:5/f") == "postgresql://flag@h:5/f"
    # the quick path is taken for the plain single variable only
    assert (dsn_from_environment() is not None) == (
        len(env) == 1
        and next(iter(env)) in ("RUNSTREAM_POSTGRES_DSN", "RUNSTREAM_STORE_POSTGRES__DSN")
    )
