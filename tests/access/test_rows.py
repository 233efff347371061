"""RowLookup: one row by a fixed SQL text, turned into the instance the ORM would build."""

import pytest
from django.db.models.signals import post_init

from access.rows import RowLookup, all_attnames
from loyalty.models import Program

pytestmark = pytest.mark.django_db

OWN = "m_own"


def fields_of(instance) -> dict:
    return {k: v for k, v in vars(instance).items() if k != "_state"}


def test_a_whole_row_builds_the_instance_the_orm_would(make_program):
    program = make_program(merchant_id=OWN)
    expected = Program.objects.get(pk=program.pk)
    built = RowLookup.of(Program, all_attnames(Program), id=program.pk, merchant_id=OWN).get()

    assert type(built) is Program
    assert fields_of(built) == fields_of(expected)
    assert (built._state.adding, built._state.db) == (False, "default")
    assert built.get_deferred_fields() == set()
    assert built.merchant.pk == OWN  # the foreign key resolves as usual
    built.name = "Renamed"
    built.save(update_fields=["name"])
    assert Program.objects.get(pk=program.pk).name == "Renamed"


def test_a_partial_row_defers_the_rest_and_signals_fire(make_program):
    program = make_program(merchant_id=OWN)

    partial = RowLookup.of(Program, ("id", "name"), id=program.pk).get()
    assert partial.get_deferred_fields() == set(all_attnames(Program)) - {"id", "name"}

    seen = []

    def receiver(sender, instance, **kwargs):
        seen.append(instance)

    post_init.connect(receiver, sender=Program)
    try:
        built = RowLookup.of(Program, all_attnames(Program), id=program.pk).get()
    finally:
        post_init.disconnect(receiver, sender=Program)
    assert seen == [built]


def test_no_row_is_none(make_program):
    program = make_program(merchant_id=OWN)
    lookup = RowLookup.of(Program, all_attnames(Program), id=program.pk, merchant_id="m_other")
    assert lookup.get() is None
