"""The key layout. Every key starts with the configured ``key_prefix``.

::

    {prefix}:{<table>}:r:<pk-json>   a cached row, e.g.  app:{hero}:r:[42]
    {prefix}:{<table>}:rt            the table's row tag: changes on bulk writes to the table
    {prefix}:{<table>}:dt            the table's data tag: changes on every write to the table
    {prefix}:{<table>}:q:<digest>    a cached query result (digest of shape + parameters),
                                     under the first table it reads

A row entry is valid only while it starts with its table's current row tag, so a bulk
``UPDATE``/``DELETE`` invalidates every cached row of a table by changing one key (O(1), no
``KEYS``/``SCAN``). Query entries carry the data tags of every table they read, so any
write to any of those tables retires them, in O(1) too. Tags are random, not counters: a
tag lost to eviction comes back as a new random value, which can never revive entries
written under an older one.

The ``{<table>}`` hash tag keeps a table's rows, tags and single-table query entries in one
Redis Cluster slot, so one atomic script can check an entry against its tags; only a query
reading several tables needs the tags of the others from their own slots first.
"""

from __future__ import annotations

import os

from sqlmodel_cache.transport._protocols import LEASE_PREFIX


def table_part(prefix: str, table_name: str) -> str:
    return f"{prefix}:{{{table_name}}}"


def row_key(table_prefix: str, pk_json: str) -> str:
    return f"{table_prefix}:r:{pk_json}"


def row_tag_key(table_prefix: str) -> str:
    return f"{table_prefix}:rt"


def data_tag_key(table_prefix: str) -> str:
    return f"{table_prefix}:dt"


def query_key(table_prefix: str, digest: str) -> str:
    return f"{table_prefix}:q:{digest}"


def new_tag() -> bytes:
    """A fresh tag: 16 hex characters (64 random bits), so equal tags never happen by chance."""
    return os.urandom(8).hex().encode("ascii")


def fresh_tag_of(lease: bytes) -> bytes:
    """The tag a fetch creates missing tags with: the random part of its lease. A lease is
    unique to one fetch, so this tag is as fresh as one from :func:`new_tag`, and a read
    draws from the OS once, not twice."""
    return lease[len(LEASE_PREFIX) :]


def new_lease() -> bytes:
    """A lease marker unique to one fetch."""
    return LEASE_PREFIX + os.urandom(8).hex().encode("ascii")
