"""One model row by a fixed SQL text: what `Model.objects.filter(...).first()` reads, without
compiling the query on every request.

The ORM builds and compiles a queryset's SQL anew each time (about 0.3 ms of CPU for a plain
lookup); the hot lookups of every API write (the caller's API key, the event's program) run
instead one statement whose text is built once per process, with bound parameters (so the
database prepares it once per connection too), and turn the row into an instance with the
same converters the ORM applies.
"""

import functools

from django.db import connections
from django.db.models import Model


@functools.cache
def _select(model: type[Model], attnames: tuple[str, ...], where: tuple[str, ...], vendor: str):
    connection = connections["default"]
    qn = connection.ops.quote_name
    meta = model._meta
    table = qn(meta.db_table)
    fields = [meta.get_field(name) for name in attnames]
    columns = ", ".join(f"{table}.{qn(f.column)}" for f in fields)
    conditions = " AND ".join(f"{table}.{qn(meta.get_field(name).column)} = %s" for name in where)
    # Identifiers come from the model's metadata; values are bound parameters.
    sql = f"SELECT {columns} FROM {table} WHERE {conditions}"  # noqa: S608
    converters = []
    for index, field in enumerate(fields):
        col = field.get_col(meta.db_table)
        found = connection.ops.get_db_converters(col) + field.get_db_converters(connection)
        if found:
            converters.append((index, col, found))
    return sql, converters, [meta.get_field(name) for name in where]


def row_get(model: type[Model], attnames: tuple[str, ...], **where):
    """The instance of `model` whose fields equal `where` (None if none), with `attnames`
    loaded (others deferred). At most one row must match (look up by unique columns)."""
    connection = connections["default"]
    sql, converters, where_fields = _select(model, attnames, tuple(where), connection.vendor)
    params = [
        field.get_db_prep_value(value, connection)
        for field, value in zip(where_fields, where.values(), strict=True)
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return None
    values = list(row)
    for index, col, functions in converters:
        for convert in functions:
            values[index] = convert(values[index], col, connection)
    return model.from_db(connection.alias, attnames, values)


@functools.cache
def all_attnames(model: type[Model]) -> tuple[str, ...]:
    return tuple(f.attname for f in model._meta.concrete_fields)
