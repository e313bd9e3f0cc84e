"""A master row's INSERT written once per table and columns (master/inserts.py).

The statement must be the one Django's compiler writes, with the same values, seen by the same
cursor wrappers; everything Django's insert does that the cached statement cannot do must go to
Django's insert. Tier i: no broker.
"""

import datetime
import decimal

import pytest
from django.db import connection, models
from django.db.models.functions import Upper
from django.test.utils import CaptureQueriesContext, isolate_apps

from cqrs_celery.master import inserts
from cqrs_celery.mixins import MasterMixin
from tests.master_app.models import Author, Book, Item, Publisher

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def django_insert(monkeypatch):
    """Make every master insert take Django's own path (the reference to compare with)."""
    monkeypatch.setattr(inserts, 'insert', lambda *args: None)


def _statements(make):
    """The SQL (with its placeholders) and parameter types of the statements ``make()`` runs."""
    seen = []

    def spy(execute, sql, params, many, context):
        seen.append((sql, [type(param) for param in params or ()]))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(spy):
        make()
    return seen


def test_a_new_rows_insert_is_the_statement_djangos_compiler_writes(monkeypatch):
    cached = _statements(lambda: Publisher.objects.create(name='Penguin'))
    monkeypatch.setattr(inserts, 'insert', lambda *args: None)
    assert cached == _statements(lambda: Publisher.objects.create(name='Penguin'))
    assert [sql for sql, _ in cached if sql.startswith('INSERT INTO')]


def test_the_cached_insert_writes_the_values_djangos_writes(django_insert, monkeypatch):
    values = {'title': 'Dune', 'price': decimal.Decimal('12.3400'), 'published': datetime.date(1965, 8, 1)}
    author = Author.objects.create(name='Frank Herbert')
    reference = Book.objects.create(author=author, **values)
    monkeypatch.undo()
    book = Book.objects.create(author=author, **values)
    assert book.pk != reference.pk
    fields = [f.attname for f in Book._meta.concrete_fields if f.attname not in {'id', 'cqrs_updated'}]
    rows = {row['id']: row for row in Book.objects.values()}
    assert {f: rows[book.pk][f] for f in fields} == {f: rows[reference.pk][f] for f in fields}
    assert book.cqrs_revision == rows[book.pk]['cqrs_revision'] == 0
    assert book.cqrs_updated == rows[book.pk]['cqrs_updated']


def test_a_plain_new_row_takes_the_cached_statement():
    inserts.forget()
    Publisher.objects.create(name='first')
    Publisher.objects.create(name='second')
    plans = [plan for key, plan in inserts._plans.items() if key[1] is Publisher]
    assert len(plans) == 1 and plans[0] is not None
    assert plans[0].sql.startswith('INSERT INTO ')


def test_a_row_whose_revision_the_statement_computes_takes_a_cached_statement_too():
    inserts.forget()
    Item.objects.create(sku='a-1', name='first')
    Item.objects.get(sku='a-1').delete()
    again = Item.objects.create(sku='a-1', name='again')
    other = Item.objects.create(sku='b-2', name='other')
    plans = [plan for key, plan in inserts._plans.items() if key[1] is Item]
    assert len(plans) == 1 and plans[0] is not None and plans[0].revision_at >= 0
    assert (again.cqrs_revision, other.cqrs_revision) == (2, 0)  # one past the deletion's revision 1
    assert dict(Item.objects.values_list('sku', 'cqrs_revision')) == {'a-1': 2, 'b-2': 0}


def test_the_query_log_shows_the_cached_insert_with_its_values():
    with CaptureQueriesContext(connection) as context:
        Publisher.objects.create(name='watched')
    assert [q for q in context.captured_queries if q['sql'].startswith('INSERT INTO') and "'watched'" in q['sql']]


def test_an_expression_value_goes_to_djangos_insert():
    publisher = Publisher.objects.create(name=Upper(models.Value('lower case')))
    assert Publisher.objects.get(pk=publisher.pk).name == 'LOWER CASE'


def test_a_raw_save_goes_to_djangos_insert():
    publisher = Publisher(name='raw')
    fields = [f for f in Publisher._meta.local_concrete_fields if f is not Publisher._meta.auto_field]
    assert inserts.insert(publisher, Publisher._base_manager, 'default', fields, [Publisher._meta.pk], True) is None


@isolate_apps('tests.master_app')
def test_fields_and_managers_the_cached_statement_cannot_serve_go_to_djangos_insert(registries):
    class PlaceholderField(models.TextField):
        def get_placeholder(self, value, compiler, connection):
            return 'upper(%s)'

    class ConvertedKey(models.BigAutoField):
        def from_db_value(self, value, expression, connection):
            return None if value is None else str(value)

    class OwnInsert(models.QuerySet):
        def _insert(self, *args, **kwargs):
            return super()._insert(*args, **kwargs)

    class Placeholder(MasterMixin):
        CQRS_ID = 'throwaway_fast_insert_placeholder'
        text = PlaceholderField()

        class Meta:
            app_label = 'master_app'

    class Converted(MasterMixin):
        CQRS_ID = 'throwaway_fast_insert_converted'
        id = ConvertedKey(primary_key=True)

        class Meta:
            app_label = 'master_app'

    class Managed(MasterMixin):
        CQRS_ID = 'throwaway_fast_insert_managed'
        objects = OwnInsert.as_manager()
        name = models.TextField()

        class Meta:
            app_label = 'master_app'
            base_manager_name = 'objects'

    class Defaulted(MasterMixin):
        CQRS_ID = 'throwaway_fast_insert_defaulted'
        name = models.TextField(db_default='unnamed')

        class Meta:
            app_label = 'master_app'

    for model in (Placeholder, Converted, Managed, Defaulted):
        fields = [f for f in model._meta.local_concrete_fields if f is not model._meta.auto_field]
        returning = model._meta.db_returning_fields
        assert inserts.insert(model(), model._base_manager, 'default', fields, returning, False) is None, model
        # The first three never get a statement; the last has one, but not for a db_default value.
        planned = inserts._plan(model._base_manager, 'default', tuple(fields), tuple(returning), None)
        assert (planned is not None) == (model is Defaulted), model
