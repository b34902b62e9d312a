"""``configure()`` and ``CacheSettings``: one set of options, validated in one place."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from sqlmodel_cache import CacheSettings, ConfigurationError, SQLModelCache
from sqlmodel_cache.transport import MemoryTransport


def test_every_configure_option_is_a_setting_with_the_same_default() -> None:
    """configure()'s keyword options are exactly CacheSettings' fields, with equal defaults,
    so get_config() shows every option and the two can never disagree."""
    parameters = inspect.signature(SQLModelCache.configure).parameters
    fields = {field.name: field for field in dataclasses.fields(CacheSettings)}
    assert next(iter(parameters)) == "transport"
    assert set(parameters) == set(fields)
    for name, parameter in parameters.items():
        if name == "transport":
            continue
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY, name
        assert parameter.default == fields[name].default, name


def test_get_config_shows_the_breaker_settings() -> None:
    """The circuit breaker's options are in get_config() like every other option."""
    SQLModelCache.configure(MemoryTransport(), breaker_threshold=3, breaker_reset=2)
    config = SQLModelCache.get_config()
    assert (config.breaker_threshold, config.breaker_reset) == (3, 2.0)
    assert type(config.breaker_reset) is float


def test_settings_validate_themselves() -> None:
    """A CacheSettings built directly is checked like configure()'s arguments."""
    with pytest.raises(ConfigurationError, match="lease_wait must be a number from 0 to below"):
        CacheSettings(transport=MemoryTransport(), lease_ttl=1, lease_wait=1)
    with pytest.raises(ConfigurationError, match="not a cache transport"):
        CacheSettings(transport=object())


def test_a_refused_signing_key_is_not_shown() -> None:
    """The error for a short signing key never prints the key itself."""
    with pytest.raises(ConfigurationError) as refused:
        SQLModelCache.configure(MemoryTransport(), signing_key=b"hunter2")
    assert "hunter2" not in str(refused.value)
