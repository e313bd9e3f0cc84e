"""``cqrs_bulk_dump`` / ``cqrs_bulk_load``: a master table to a file and into a replica, no broker."""

import datetime
from io import StringIO

import pytest
import ujson
from django.core.management import CommandError, call_command
from django.utils import timezone

from cqrs_celery.testing import capture_envelopes
from tests.master_app.models import AllFields, Author, Item, LongKey, Renamed
from tests.replica_app.models import (
    NoteEvent,
    ReplicaAllFields,
    ReplicaAuthor,
    ReplicaItem,
    ReplicaLongKey,
    ReplicaRenamed,
)
from tests.test_field_types import VALUES, assert_replica_equals_master, full_row_values

pytestmark = pytest.mark.django_db(transaction=True)


def dump(path, *args):
    err = StringIO()
    call_command('cqrs_bulk_dump', '--output', str(path), *args, stderr=err)
    return err.getvalue()


def load(path, *args, stdin=None):
    err = StringIO()
    call_command('cqrs_bulk_load', '--input', str(path), *args, stderr=err, **({'stdin': stdin} if stdin else {}))
    return err.getvalue()


def master_rows(model, **values_per_row):
    with capture_envelopes():  # written on the master only: the replica learns of them from the file
        return [model.objects.create(**values) for values in values_per_row.values()]


def test_every_field_type_survives_the_dump_and_the_load_exactly(tmp_path):
    from django.db import connection

    with capture_envelopes():
        author = Author.objects.create(name='a')
        rows = [AllFields.objects.create(**full_row_values(author)), AllFields.objects.create()]
        for field, value in VALUES:
            if connection.vendor == 'sqlite' and field == 'decimal':
                continue  # SQLite keeps ~15 digits of a DECIMAL even on the master (test_field_types)
            rows.append(AllFields.objects.create(**{field: value}))
    path = tmp_path / 'all.dump'

    dump(path, '--cqrs-id', 'all_fields', '--batch', '7')
    report = load(path, '--batch', '5')

    assert f'{len(rows)} all_fields rows loaded' in report
    assert ReplicaAllFields.objects.count() == len(rows)
    for row in rows:
        assert_replica_equals_master(row.pk)


def test_the_file_is_the_cqrs_id_then_one_json_object_per_row(tmp_path):
    rows = master_rows(Item, a={'sku': 'sku-1', 'name': 'one', 'quantity': 1},
                       b={'sku': 'sku-2', 'name': 'two', 'quantity': 2})
    path = tmp_path / 'item.dump'

    report = dump(path, '--cqrs-id', 'item')

    first, *lines = path.read_text().splitlines()
    assert first == 'item'
    assert [ujson.loads(line) for line in lines] == [row.to_cqrs_dict() for row in rows]
    assert '2 item rows dumped' in report


@pytest.mark.parametrize(('master', 'replica', 'rows', 'pk_of'), [
    (LongKey, ReplicaLongKey, {'a': {'key': 'k' * 600, 'value': 1}, 'b': {'key': 'short', 'value': 2}},
     lambda row: row.key),
    (Item, ReplicaItem, {'a': {'sku': 'x/1', 'name': 'n', 'quantity': 3}}, lambda row: row.sku),
    (Renamed, ReplicaRenamed, {'a': {'number': 41, 'name': 'forty-one'}}, lambda row: row.number),
], ids=['text-pk', 'char-pk', 'renamed-pk'])
def test_a_primary_key_of_any_name_round_trips(tmp_path, master, replica, rows, pk_of):
    created = master_rows(master, **rows)
    path = tmp_path / 'rows.dump'

    dump(path, '--cqrs-id', master.CQRS_ID)
    load(path)

    assert sorted(replica.objects.values_list('pk', flat=True)) == sorted(pk_of(row) for row in created)
    assert all(replica.objects.get(pk=pk_of(row)).cqrs_revision == row.cqrs_revision for row in created)


def test_the_dump_goes_to_stdout_with_a_dash_and_loads_from_stdin(tmp_path):
    master_rows(Author, a={'name': 'one'}, b={'name': 'two'})
    out = StringIO()

    call_command('cqrs_bulk_dump', '--cqrs-id', 'author', '-o', '-', stdout=out, stderr=StringIO())
    load('-', stdin=StringIO(out.getvalue()))

    assert out.getvalue().startswith('author\n')
    assert sorted(ReplicaAuthor.objects.values_list('name', flat=True)) == ['one', 'two']


def test_clear_deletes_the_replica_rows_the_file_does_not_have(tmp_path):
    master_rows(Item, a={'sku': 'kept', 'name': 'n'})
    ReplicaItem.objects.create(sku='stray', name='only here', quantity=0, cqrs_revision=3, cqrs_updated=timezone.now())
    path = tmp_path / 'item.dump'
    dump(path, '--cqrs-id', 'item')

    load(path)
    assert sorted(ReplicaItem.objects.values_list('sku', flat=True)) == ['kept', 'stray']
    load(path, '--clear')
    assert list(ReplicaItem.objects.values_list('sku', flat=True)) == ['kept']


@pytest.mark.parametrize(('args', 'cleared'), [(['--clear', 'true'], True), (['-c', '1'], True),
                                               (['--clear', 'false'], False)])
def test_clear_takes_django_cqrs_value_form_too(tmp_path, args, cleared):
    master_rows(Item, a={'sku': 'kept', 'name': 'n'})
    ReplicaItem.objects.create(sku='stray', name='only here', quantity=0, cqrs_revision=3, cqrs_updated=timezone.now())
    path = tmp_path / 'item.dump'
    dump(path, '--cqrs-id', 'item')

    load(path, *args)

    assert ReplicaItem.objects.filter(sku='stray').exists() is not cleared


def test_loading_follows_the_revision_rules(tmp_path):
    rows = master_rows(Item, a={'sku': 'newer-here', 'name': 'master'}, b={'sku': 'same', 'name': 'master'})
    now = timezone.now()
    ReplicaItem.objects.create(sku='newer-here', name='replica', quantity=0, cqrs_revision=5, cqrs_updated=now)
    ReplicaItem.objects.create(sku='same', name='drifted', quantity=0, cqrs_revision=rows[1].cqrs_revision,
                               cqrs_updated=now)
    path = tmp_path / 'item.dump'
    dump(path, '--cqrs-id', 'item')

    report = load(path)

    assert ReplicaItem.objects.get(sku='newer-here').name == 'replica'  # a newer stored row is kept
    assert ReplicaItem.objects.get(sku='same').name == 'master'  # a sync at the same revision repairs it
    assert '1 stale' in report and '1 updated' in report


def test_a_dump_written_by_django_cqrs_loads(tmp_path):
    path = tmp_path / 'author.dump'
    path.write_text('author\n'
                    '{"publisher":null,"name":"n","cqrs_updated":"2019-06-11 04:59:50.121770+00:00",'
                    '"cqrs_revision":0,"books":[],"id":1}\n'
                    '{"publisher":null,"name":"m","cqrs_updated":"2019-06-11 04:59:50.121824+00:00",'
                    '"cqrs_revision":2,"books":[],"id":2}')

    load(path)

    row = ReplicaAuthor.objects.get(pk=2)
    assert (row.name, row.cqrs_revision) == ('m', 2)
    assert row.cqrs_updated == datetime.datetime(2019, 6, 11, 4, 59, 50, 121824, tzinfo=datetime.timezone.utc)


def test_a_model_without_a_table_gets_each_row_through_its_own_cqrs_save(tmp_path):
    path = tmp_path / 'notes.dump'
    path.write_text('manual_note\n{"id": 1, "text": "t", "cqrs_revision": 0}\n')

    load(path)

    assert list(NoteEvent.objects.values_list('signal', flat=True)) == ['SYNC']


def test_bad_lines_are_reported_with_their_number_and_the_good_ones_load(tmp_path):
    path = tmp_path / 'author.dump'
    path.write_text('author\n{"id": 1, "name": "ok", "cqrs_revision": 0, "cqrs_updated": "2020-01-01T00:00:00+00:00"}\n'
                    'not json\n{"name": "no pk", "cqrs_revision": 0}\n'
                    '{"id": 4, "name": "no revision", "cqrs_updated": "2020-01-01T00:00:00+00:00"}\n')
    err = StringIO()

    with pytest.raises(CommandError, match='3 lines of .* could not be loaded'):
        call_command('cqrs_bulk_load', '-i', str(path), stderr=err)

    assert list(ReplicaAuthor.objects.values_list('pk', flat=True)) == [1]
    assert 'line 3 not loaded: not JSON' in err.getvalue()
    assert 'line 4 not loaded: no primary key' in err.getvalue()
    assert 'line 5 not loaded' in err.getvalue()


@pytest.mark.parametrize(('content', 'message'), [
    (None, 'does not exist'),
    ('', 'is empty'),
    ('\n\n', 'is empty'),
    ('nope\n{}\n', "No replica model has CQRS_ID 'nope'"),
    ('{"id": 1}\n', 'No replica model has CQRS_ID'),
])
def test_a_file_that_cannot_be_loaded_fails_with_a_command_error_that_says_why(tmp_path, content, message):
    path = tmp_path / 'bad.dump'
    if content is not None:
        path.write_text(content)

    with pytest.raises(CommandError, match=message):
        load(path)


def test_a_binary_file_fails_with_a_command_error(tmp_path):
    path = tmp_path / 'bad.dump'
    path.write_bytes(b'\xff\xfe\x00garbage')

    with pytest.raises(CommandError, match='not a text file'):
        load(path)


@pytest.mark.parametrize(('args', 'message'), [
    (['--cqrs-id', 'nope'], "No master model has CQRS_ID 'nope'"),
    (['--cqrs-id', 'item', '--batch', '0'], '--batch'),
    (['--cqrs-id', 'item', '--filter', '{"nope": 1}'], 'not a usable filter'),
])
def test_dump_arguments_are_checked(tmp_path, args, message):
    with pytest.raises(CommandError, match=message):
        dump(tmp_path / 'x.dump', *args)


def test_an_existing_file_is_overwritten_only_with_force(tmp_path):
    path = tmp_path / 'item.dump'
    path.write_text('keep me')

    with pytest.raises(CommandError, match='exists'):
        dump(path, '--cqrs-id', 'item')
    assert path.read_text() == 'keep me'
    dump(path, '--cqrs-id', 'item', '--force')
    assert path.read_text() == 'item\n'


def test_progress_is_a_bar_when_asked_and_plain_lines_otherwise(tmp_path, capsys):
    master_rows(Item, **{str(i): {'sku': f's{i}', 'name': 'n'} for i in range(5)})

    lines = dump(tmp_path / 'plain.dump', '--cqrs-id', 'item', '--batch', '2')
    assert [line for line in lines.splitlines() if 'read' in line] == ['2 rows read', '4 rows read', '5 rows read']

    bar = dump(tmp_path / 'bar.dump', '--cqrs-id', 'item', '--batch', '2', '--progress')
    assert 'rows read' not in bar
    assert '5/5' in capsys.readouterr().err  # tqdm's bar, on stderr
