"""One model row by a fixed SQL text: what `Model.objects.filter(...).first()` reads, without
compiling the query on every request.

The ORM builds and compiles a queryset's SQL anew each time (about 0.3 ms of CPU for a plain
lookup); the hot lookups of every API write (the caller's API key, the event's program) run
instead one statement whose text is built once per process, with bound parameters (so the
database prepares it once per connection too), and turn the row into an instance with the
same converters the ORM applies.
"""

import functools
from dataclasses import dataclass

from django.db import connections
from django.db.models import Model


@dataclass(frozen=True)
class RowLookup:
    """The row of `model` whose fields equal `where`, with `attnames` loaded (others
    deferred). At most one row may match: look up by unique columns."""

    model: type[Model]
    attnames: tuple[str, ...]
    where: tuple[tuple[str, object], ...]

    @classmethod
    def of(cls, model: type[Model], attnames: tuple[str, ...], **where) -> "RowLookup":
        return cls(model, attnames, tuple(where.items()))

    def _shape(self) -> "_Shape":
        return _shape(self.model, self.attnames, tuple(name for name, _ in self.where))

    def sql(self) -> tuple[str, str, str, list]:
        """(table, column list, condition, parameters): to select the row alone, or to join
        it into another statement."""
        connection = connections["default"]
        shape = self._shape()
        params = [
            field.get_db_prep_value(value, connection)
            for field, (_, value) in zip(shape.where_fields, self.where, strict=True)
        ]
        return shape.table, shape.columns, shape.condition, params

    def build(self, row):
        """The instance from the selected columns (None for a row of NULLs: none matched)."""
        if row is None or all(value is None for value in row):
            return None
        connection = connections["default"]
        shape = self._shape()
        values = list(row)
        for index, col, functions in shape.converters:
            for convert in functions:
                values[index] = convert(values[index], col, connection)
        return self.model.from_db(connection.alias, self.attnames, values)

    def get(self):
        table, columns, condition, params = self.sql()
        # Identifiers come from the model's metadata; values are bound parameters.
        sql = f"SELECT {columns} FROM {table} WHERE {condition}"  # noqa: S608
        with connections["default"].cursor() as cursor:
            cursor.execute(sql, params)
            return self.build(cursor.fetchone())


@dataclass(frozen=True)
class _Shape:
    table: str
    columns: str
    condition: str
    where_fields: list
    converters: list


@functools.cache
def _shape(model: type[Model], attnames: tuple, where: tuple) -> _Shape:
    connection = connections["default"]
    qn = connection.ops.quote_name
    meta = model._meta
    table = qn(meta.db_table)
    fields = [meta.get_field(name) for name in attnames]
    columns = ", ".join(f"{table}.{qn(f.column)}" for f in fields)
    where_fields = [meta.get_field(name) for name in where]
    condition = " AND ".join(f"{table}.{qn(f.column)} = %s" for f in where_fields)
    converters = []
    for index, field in enumerate(fields):
        col = field.get_col(meta.db_table)
        found = connection.ops.get_db_converters(col) + field.get_db_converters(connection)
        if found:
            converters.append((index, col, found))
    return _Shape(table, columns, condition, where_fields, converters)


def row_get(model: type[Model], attnames: tuple[str, ...], **where):
    """The instance of `model` whose fields equal `where` (None if none), with `attnames`
    loaded (others deferred). At most one row must match (look up by unique columns)."""
    return RowLookup.of(model, attnames, **where).get()


@functools.cache
def all_attnames(model: type[Model]) -> tuple[str, ...]:
    return tuple(f.attname for f in model._meta.concrete_fields)
