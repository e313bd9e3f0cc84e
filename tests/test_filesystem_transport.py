"""cqrs_celery's filesystem transport: message files appear complete or not at all (tier ii)."""

import uuid

from kombu import Connection, Exchange, Queue


def connection(folder):
    options = {'data_folder_in': str(folder), 'data_folder_out': str(folder),
               'control_folder': str(folder / 'control')}
    (folder / 'control').mkdir(exist_ok=True)
    return Connection('filesystem://', transport='cqrs_celery.filesystem:Transport', transport_options=options)


def fresh_queue():
    """Names of its own: kombu keeps the bindings it has declared in process-wide state."""
    name = f'fsq{uuid.uuid4().hex[:8]}'
    return Queue(name, Exchange(f'fsx{name}', 'direct'), routing_key=name)


def test_a_published_message_is_one_complete_file_and_no_partial_file_is_left(tmp_path):
    with connection(tmp_path) as conn:
        entity = fresh_queue()
        queue = conn.SimpleQueue(entity)
        queue.put({'cqrs': 'x' * 100_000})
        files = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
        assert len(files) == 1 and files[0].endswith(f'.{entity.name}.msg')
        message = queue.get(timeout=1)
        assert message.payload == {'cqrs': 'x' * 100_000}
        message.ack()
        queue.close()


def test_a_file_still_being_written_is_not_taken_by_a_consumer(tmp_path):
    with connection(tmp_path) as conn:
        entity = fresh_queue()
        queue = conn.SimpleQueue(entity)
        (tmp_path / f'.123_abc.{entity.name}.msg.partial').write_bytes(b'{"half": ')
        assert queue.qsize() == 0
        queue.put({'whole': True})
        message = queue.get(timeout=1)
        assert message.payload == {'whole': True}
        message.ack()
        queue.close()
