"""Table models shared by the tests: one per kind of key, column type or relationship.

No ``from __future__ import annotations`` here: SQLModel resolves relationship annotations
at class creation.
"""

import datetime as dt
import decimal
import enum
import uuid
from typing import Any

from sqlalchemy import JSON, Column, ForeignKey, Integer, LargeBinary, String, Text, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, column_property, mapped_column
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


class Newborn(SQLModel, table=True):
    """A model with its own ``__new__``: cached instances must be built through it."""

    __cache_config__ = CacheConfig(queries=True)
    id: int | None = Field(default=None, primary_key=True)
    name: str = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> "Newborn":
        instance = super().__new__(cls, *args, **kwargs)
        NEWBORN_BIRTHS.append(cls)
        return instance


NEWBORN_BIRTHS: list[type] = []


class Base(DeclarativeBase):
    """Plain SQLAlchemy declarative models work too."""


class Document(Base):
    __tablename__ = "document"
    __cache_config__ = CacheConfig()
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(100))
    body: Mapped[str] = mapped_column(Text, deferred=True)


class Enrollment(SQLModel, table=True):
    """A cache-enabled link model of a many-to-many relationship."""

    __cache_config__ = CacheConfig()
    course_id: int | None = Field(default=None, foreign_key="course.id", primary_key=True)
    student_id: int | None = Field(default=None, foreign_key="student.id", primary_key=True)


class Course(SQLModel, table=True):
    __cache_config__ = CacheConfig()
    id: int | None = Field(default=None, primary_key=True)
    title: str = ""
    students: list["Student"] = Relationship(back_populates="courses", link_model=Enrollment)


class Student(SQLModel, table=True):
    __cache_config__ = CacheConfig()
    id: int | None = Field(default=None, primary_key=True)
    name: str = ""
    courses: list[Course] = Relationship(back_populates="students", link_model=Enrollment)


class Album(SQLModel, table=True):
    """Tracks are deleted when removed from the album (delete-orphan)."""

    __cache_config__ = CacheConfig()
    id: int | None = Field(default=None, primary_key=True)
    tracks: list["Track"] = Relationship(
        back_populates="album", sa_relationship_kwargs={"cascade": "all, delete-orphan"}
    )


class Track(SQLModel, table=True):
    __cache_config__ = CacheConfig()
    id: int | None = Field(default=None, primary_key=True)
    title: str = ""
    album_id: int | None = Field(default=None, foreign_key="album.id")
    album: Album | None = Relationship(back_populates="tracks")


class Shelf(Base):
    """A SQL-expression column_property: not cacheable (other rows change its value)."""

    __tablename__ = "shelf"
    __cache_config__ = CacheConfig()
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    label: Mapped[str] = mapped_column(String(50))


class ShelfItem(Base):
    __tablename__ = "shelf_item"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    shelf_id: Mapped[int] = mapped_column(ForeignKey("shelf.id"))


Shelf.item_count = column_property(  # type: ignore[attr-defined]
    select(func.count(ShelfItem.id)).where(ShelfItem.shelf_id == Shelf.id).scalar_subquery()
)


class Employee(Base):
    """Joined-table inheritance: queries over it read both tables."""

    __tablename__ = "employee"
    __cache_config__ = CacheConfig()
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    kind: Mapped[str] = mapped_column(String(20))
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "employee"}  # noqa: RUF012


class Manager(Employee):
    __tablename__ = "manager"
    id: Mapped[int] = mapped_column(ForeignKey("employee.id"), primary_key=True)
    budget: Mapped[int] = mapped_column(Integer, default=0)
    __mapper_args__ = {"polymorphic_identity": "manager"}  # noqa: RUF012


class Tip(SQLModel, table=True):
    """Cached for get() only: its queries always go to the database."""

    __cache_config__ = CacheConfig(queries=False)
    id: int | None = Field(default=None, primary_key=True)
    text: str = ""


class Fact(SQLModel, table=True):
    """A separate, shorter TTL for query results."""

    __cache_config__ = CacheConfig(ttl=300, query_ttl=30)
    id: int | None = Field(default=None, primary_key=True)
    text: str = ""


class Counter(SQLModel, table=True):
    """The stale-read checker's row: ``seq`` counts commits, ``token`` is unique per write
    attempt (so a value from a rolled-back attempt is recognisable)."""

    __cache_config__ = CacheConfig(ttl=60)
    id: int | None = Field(default=None, primary_key=True)
    seq: int = 0
    token: str = "initial"


METADATAS = (SQLModel.metadata, Base.metadata)
