"""Table models shared by the tests: one per kind of key, column type or relationship.

No ``from __future__ import annotations`` here: SQLModel resolves relationship annotations
at class creation.
"""

import datetime as dt
import decimal
import enum
import uuid
from typing import Any

from sqlalchemy import JSON, Column, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlmodel import Field, Relationship, SQLModel

from sqlmodel_cache import CacheConfig


class Team(SQLModel, table=True):
    __cache_config__ = CacheConfig(ttl=300)
    id: int | None = Field(default=None, primary_key=True)
    name: str = ""
    heroes: list["Hero"] = Relationship(back_populates="team")


class Hero(SQLModel, table=True):
    __cache_config__ = CacheConfig(ttl=300)
    id: int | None = Field(default=None, primary_key=True)
    name: str = ""
    power: int = 0
    secret_name: str | None = None
    team_id: int | None = Field(default=None, foreign_key="team.id")
    team: Team | None = Relationship(back_populates="heroes")


class Note(SQLModel, table=True):
    """Not cache-enabled: every read goes to the database."""

    id: int | None = Field(default=None, primary_key=True)
    text: str = ""


class Switched(SQLModel, table=True):
    """Opted out explicitly."""

    __cache_config__ = CacheConfig(enabled=False)
    id: int | None = Field(default=None, primary_key=True)
    text: str = ""


class Gadget(SQLModel, table=True):
    """A UUID primary key."""

    __cache_config__ = CacheConfig()
    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    label: str = ""


class Membership(SQLModel, table=True):
    """A composite primary key of a string and an integer."""

    __cache_config__ = CacheConfig()
    org: str = Field(primary_key=True)
    user_id: int = Field(primary_key=True)
    role: str = ""


class Reading(SQLModel, table=True):
    """A datetime primary key."""

    __cache_config__ = CacheConfig()
    at: dt.datetime = Field(primary_key=True)
    value: float = 0.0


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Specimen(SQLModel, table=True):
    """One column of every supported type, to prove values come back exactly."""

    __cache_config__ = CacheConfig()
    id: int | None = Field(default=None, primary_key=True)
    price: decimal.Decimal = Field(default=decimal.Decimal("0"), max_digits=12, decimal_places=4)
    ratio: float = 0.0
    flag: bool = False
    created: dt.datetime = Field(
        default_factory=lambda: dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc)
    )
    day: dt.date = dt.date(2024, 1, 2)
    moment: dt.time = dt.time(12, 30, 15)
    span: dt.timedelta = dt.timedelta(days=1, seconds=2)
    blob: bytes = Field(default=b"", sa_column=Column(LargeBinary, nullable=False))
    color: Color = Color.RED
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    token: uuid.UUID = Field(default_factory=uuid.uuid4)
    maybe: str | None = None


class Author(SQLModel, table=True):
    """A one-to-many relationship loaded eagerly (lazy="selectin")."""

    __cache_config__ = CacheConfig()
    id: int | None = Field(default=None, primary_key=True)
    name: str = ""
    books: list["Book"] = Relationship(
        back_populates="author", sa_relationship_kwargs={"lazy": "selectin"}
    )


class Book(SQLModel, table=True):
    __cache_config__ = CacheConfig()
    id: int | None = Field(default=None, primary_key=True)
    title: str = ""
    author_id: int | None = Field(default=None, foreign_key="author.id")
    author: Author | None = Relationship(back_populates="books")


class Base(DeclarativeBase):
    """Plain SQLAlchemy declarative models work too."""


class Document(Base):
    __tablename__ = "document"
    __cache_config__ = CacheConfig()
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(100))
    body: Mapped[str] = mapped_column(Text, deferred=True)


METADATAS = (SQLModel.metadata, Base.metadata)
