"""The exception tree of sqlmodel-cache.

::

    CacheError                      base of every error this library raises
    ├── ConfigurationError          bad or missing configuration; the message says the fix
    │   └── MissingDependencyError  an optional extra is not installed
    └── InvalidationError           an invalidation failed: a manual one, or a commit's
                                    with raise_on_invalidation_error=True

Transport failures (a dead Redis, a timeout) are never raised to the application on a
read: the read falls back to the database and the failure is counted and logged.
"""

from __future__ import annotations


class CacheError(Exception):
    """Base exception for all sqlmodel-cache errors."""


class ConfigurationError(CacheError):
    """The cache is not configured, or is configured with a value it cannot use."""


class MissingDependencyError(ConfigurationError):
    """A feature needs an optional dependency that is not installed.

    The message says what to install, e.g. ``pip install 'sqlmodel-cache[redis]'``.

    Attributes:
        package (str): the missing package, e.g. ``"redis"``.
        extra (str): the sqlmodel-cache extra that installs it, e.g. ``"redis"``.
    """

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"{package!r} is not installed; install it with: pip install 'sqlmodel-cache[{extra}]'"
        )
        self.package = package
        self.extra = extra


class InvalidationError(CacheError):
    """An invalidation you asked for explicitly could not be done; the entries it names may
    still be served until their TTL."""
