"""`NewRows`: a model's new rows made in Python and written with one Core INSERT, not the ORM's unit of work.

On the hottest write (`POST /api/v1/sessions`) the unit of work (flush, its listeners, the identity map)
cost more CPU than the rest of the create. Every column here gets the model's own client-side default (the
UUIDv7 id, the audit timestamps, 0, [], ...) exactly as the ORM applies it at flush, so nothing has to be read
back, and a column with a SQL or server-side default is refused when the class is built, not at the first
insert. The INSERT goes straight to the asyncpg driver (`insert_on`): SQLAlchemy compiles it once per dialect,
and its own type processing makes the values, so they are bound exactly as its execution would bind them."""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from sqlalchemy import Insert, insert
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.sql.schema import CallableColumnDefault, ScalarElementColumnDefault

if TYPE_CHECKING:
    import asyncpg
    from sqlalchemy.engine import Dialect
    from sqlalchemy.engine.interfaces import ExecutionContext

M = TypeVar("M")

# Advanced-Alchemy's helper column for bulk inserts: always NULL.
_SENTINEL = "sa_orm_sentinel"


def _null() -> None:
    return None


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class _DriverInsert:
    """The INSERT as the dialect compiled it (positional parameters), and each parameter's attribute and bind
    processor (None: bound as it is)."""

    sql: str
    parameters: tuple[tuple[str, Callable[[Any], Any] | None], ...]


class NewRows(Generic[M]):
    def __init__(self, model: type[M]) -> None:
        self.defaults: list[tuple[str, Callable[[], Any]]] = []
        self.column_names: dict[str, str] = {}
        self._driver_inserts: weakref.WeakKeyDictionary[Dialect, _DriverInsert] = weakref.WeakKeyDictionary()
        for prop in sa_inspect(model).column_attrs:
            column = prop.columns[0]
            if column.name == _SENTINEL:
                continue
            self.column_names[prop.key] = column.name
            default = column.default
            if default is None:
                if column.server_default is not None:
                    raise TypeError(f"{column}: a server-side default would have to be read back")
                self.defaults.append((prop.key, _null))
            elif isinstance(default, ScalarElementColumnDefault):
                self.defaults.append((prop.key, functools.partial(_same, default.arg)))
            elif isinstance(default, CallableColumnDefault):
                # SQLAlchemy wraps the model's callable to take an execution context, which ours do not use.
                self.defaults.append((prop.key, functools.partial(default.arg, cast("ExecutionContext", None))))
            else:
                raise TypeError(f"{column}: a SQL or sequence default would have to be read back")
        self.insert: Insert = insert(sa_inspect(model).local_table)

    def values(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Every attribute of a new row: `given` ones, the others their default."""
        unknown = given.keys() - self.column_names.keys()
        if unknown:
            raise TypeError(f"unknown attributes {sorted(unknown)}")
        return {**{key: make() for key, make in self.defaults}, **given}

    async def insert_on(self, driver: asyncpg.Connection, dialect: Dialect, values: Mapping[str, Any]) -> None:
        """Inserts the row of `values` (every attribute, as `values()` makes them) on the asyncpg `driver`."""
        statement = self._driver_inserts.get(dialect)
        if statement is None:
            statement = self._driver_inserts[dialect] = self._compile(dialect)
        arguments = [values[key] if process is None else process(values[key]) for key, process in statement.parameters]
        await driver.execute(statement.sql, *arguments)

    def _compile(self, dialect: Dialect) -> _DriverInsert:
        compiled = self.insert.compile(dialect=dialect, column_keys=list(self.column_names.values()))
        if compiled.positiontup is None or dialect.paramstyle != "numeric_dollar":
            raise TypeError(f"{dialect.name}: not the asyncpg dialect's positional ($n) parameters")
        attributes = {name: key for key, name in self.column_names.items()}
        table = self.insert.table
        parameters = tuple(
            (attributes[name], table.c[name].type.dialect_impl(dialect).bind_processor(dialect))
            for name in compiled.positiontup
        )
        return _DriverInsert(compiled.string, parameters)
