"""``cqrs_outbox``: show the outbox, relay what waits in it, put set-aside events back (DESIGN §6).

Tier i: publishes are captured or refused by a test sender; no broker.
"""

import re
import time
from collections.abc import Callable
from io import StringIO
from unittest import mock

import pytest
from django.core.management import CommandError, call_command
from django.db import OperationalError, transaction

from cqrs_celery.conf import get_settings
from cqrs_celery.master import outbox, publisher
from cqrs_celery.testing import capture_envelopes
from tests.master_app.models import Author, Item
from tests.test_outbox import broker_down, cqrs_master_settings, refusing

pytestmark = pytest.mark.django_db(transaction=True)

ISO_TIME = r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[.\d]*\+00:00'


@pytest.fixture(autouse=True)
def quiet_publisher(monkeypatch):
    """Commits without a test sender leave their events to the relay; no broker-down pause outlives its test."""
    monkeypatch.setattr(publisher, '_inline_paused_until', {})
    with cqrs_master_settings(publisher='relay'):
        yield


def cqrs_outbox(*args):
    out = StringIO()
    call_command('cqrs_outbox', *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def set_aside_item():
    """Item 'A', whose event was refused once with ``outbox_max_attempts=1``: it is set aside."""
    with cqrs_master_settings(outbox_max_attempts=1), refusing('item'):
        Item.objects.create(sku='A', name='apple')
    assert outbox.status()['rows'][0]['set_aside']


def test_status_of_an_empty_outbox_says_nothing_waits():
    assert cqrs_outbox('status') == '0 events waiting and 0 set aside in the outbox of default\n'


def test_status_shows_the_waiting_events_per_cqrs_id_with_the_oldest_time():
    with transaction.atomic():
        Author.objects.create(name='Ann')
        Author.objects.create(name='Bob')
        Item.objects.create(sku='A', name='apple')

    lines = cqrs_outbox('status').splitlines()

    assert lines[0] == '3 events waiting and 0 set aside in the outbox of default'
    assert re.fullmatch(rf'  author: 2 waiting \(oldest from {ISO_TIME}\), 0 set aside', lines[1])
    assert re.fullmatch(rf'  item: 1 waiting \(oldest from {ISO_TIME}\), 0 set aside', lines[2])
    assert len(lines) == 3


def test_status_shows_set_aside_events_and_their_last_errors(set_aside_item):
    Author.objects.create(name='Ann')

    lines = cqrs_outbox('status').splitlines()

    assert lines[0] == '1 events waiting and 1 set aside in the outbox of default'
    assert re.fullmatch(rf'  author: 1 waiting \(oldest from {ISO_TIME}\), 0 set aside', lines[1])
    assert re.fullmatch(rf'  item: 0 waiting, 1 set aside \(oldest from {ISO_TIME}\)', lines[2])
    assert lines[3:] == ['Last errors of set-aside events (cqrs_outbox retry publishes them again):',
                         '  item pk="A": PublishError: message refused: item pk=\'A\'']


def test_relay_publishes_the_waiting_events_and_says_how_many():
    Author.objects.create(name='Ann')
    Author.objects.create(name='Bob')

    with capture_envelopes() as captured:
        output = cqrs_outbox('relay')

    assert output == '2 events published, 0 left\n'
    assert [e.instance_data['name'] for e in captured] == ['Ann', 'Bob']
    assert outbox.pending() == 0


def test_relay_fails_when_events_cannot_be_published():
    Author.objects.create(name='Ann')

    with broker_down(), pytest.raises(CommandError, match=r'1 events could not be published \(0 set aside\)'):
        cqrs_outbox('relay')

    assert outbox.pending() == 1


def test_relay_fails_while_set_aside_events_are_left(set_aside_item):
    with capture_envelopes() as captured, pytest.raises(CommandError, match=r'\(1 set aside\).*cqrs_outbox retry'):
        cqrs_outbox('relay')

    assert captured == []


def test_relay_with_dry_run_only_shows_the_outbox():
    Author.objects.create(name='Ann')

    with capture_envelopes() as captured:
        output = cqrs_outbox('relay', '--dry-run')

    assert output.startswith('1 events waiting and 0 set aside in the outbox of default\n')
    assert captured == []
    assert outbox.pending() == 1


def test_retry_puts_the_set_aside_events_back_and_publishes_them(set_aside_item):
    with capture_envelopes() as captured:
        output = cqrs_outbox('retry')

    assert output == '1 set-aside events put back in line\n1 events published, 0 left\n'
    assert [(e.cqrs_id, e.instance_pk) for e in captured] == [('item', 'A')]
    assert outbox.status() == {'rows': [], 'errors': []}


def test_retry_fails_when_the_events_are_refused_again(set_aside_item):
    with refusing('item'), pytest.raises(CommandError, match='1 events could not be published'):
        cqrs_outbox('retry')

    [row] = outbox.status()['rows']
    assert (row['cqrs_id'], row['set_aside'], row['count']) == ('item', False, 1)


def test_retry_with_dry_run_changes_nothing(set_aside_item):
    with capture_envelopes() as captured:
        output = cqrs_outbox('retry', '--dry-run')

    assert '0 events waiting and 1 set aside' in output
    assert captured == []
    assert outbox.status()['rows'][0]['set_aside']



def test_a_follower_publishes_events_committed_while_it_runs_then_stops_when_told():
    import threading

    from cqrs_celery.master import follow

    stop = threading.Event()
    with capture_envelopes() as envelopes:
        follower = threading.Thread(target=follow.follow, kwargs={'poll': 0.01, 'stop': stop})
        follower.start()
        try:
            Item.objects.create(sku='A', name='apple')
            with transaction.atomic():
                Author.objects.create(name='Ann')
                Item.objects.create(sku='B', name='banana')
            deadline = time.monotonic() + 10
            while len(envelopes) < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            stop.set()
            follower.join(10)
    assert not follower.is_alive()
    assert sorted((e.cqrs_id, e.instance_pk) for e in envelopes)[1:] == [('item', 'A'), ('item', 'B')]
    assert outbox.pending() == 0


def test_the_newest_event_id_grows_as_commits_write_events():
    assert outbox.newest_id() == 0
    Author.objects.create(name='Ann')
    first = outbox.newest_id()
    Author.objects.create(name='Bob')

    assert first > 0 and outbox.newest_id() > first


def test_a_follower_lets_a_burst_gather_watching_the_newest_event_and_polls_otherwise(monkeypatch):
    import threading

    from cqrs_celery.master import follow

    waits: list[float] = []

    class Stop(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            waits.append(timeout or 0.0)
            return self.is_set()

    stop = Stop()
    # what each drain answers: nothing, a burst (400 events in a few ms), one event, the broker away
    answers = iter([(None, 0), (None, 400), (None, 1), (publisher.BROKER_RETRY, 0)])

    def drain_ready(using: str) -> tuple[float | None, int]:
        answer = next(answers, None)
        if answer is None:
            stop.set()
            return None, 0
        return answer

    gathered: list[tuple[int, int, bool, float]] = []

    def gather(commits, came, stopping, longest) -> bool:
        gathered.append((commits(), came, stopping(), longest))
        return False

    monkeypatch.setattr(follow, 'drain_ready', drain_ready)
    monkeypatch.setattr(follow.outbox, 'newest_id', lambda using: 42)
    monkeypatch.setattr(publisher, 'gather', gather)
    follow.follow('default', poll=0.01, stop=stop)

    # the burst: gathered by the outbox's newest id, no poll
    assert gathered == [(42, 0, False, publisher.GATHER_MAX)]
    assert waits == [0.01, 0.01, publisher.BROKER_RETRY, 0.01]


def test_a_follower_that_cannot_read_the_newest_event_stops_gathering_and_goes_on(monkeypatch):
    import threading

    from cqrs_celery.master import follow

    stop = threading.Event()
    drains: list[str] = []
    reads: list[str] = []

    def drain_ready(using: str) -> tuple[float | None, int]:
        drains.append(using)
        if len(drains) == 3:
            stop.set()
        return None, 400 if len(drains) == 1 else 0  # a burst first

    def newest_id(using: str) -> int:
        reads.append(using)
        raise OperationalError('the database went away')

    monkeypatch.setattr(follow, 'drain_ready', drain_ready)
    monkeypatch.setattr(follow.outbox, 'newest_id', newest_id)
    follow.follow('default', poll=0.01, stop=stop)  # returns normally: the failed read ended the gathering

    assert reads and len(drains) == 3  # it gathered after the burst, and drained on after the failure


@pytest.mark.parametrize(('args', 'message'), [
    (['status', '--follow'], '--follow goes with relay'),
    (['retry', '--follow'], '--follow goes with relay'),
    (['relay', '--follow', '--dry-run'], '--follow goes with relay'),
    (['relay', '--follow', '--poll', '0'], '--poll must be'),
    (['relay', '--follow', '--poll', 'nan'], '--poll must be'),
    (['relay', '--follow', '--poll', '61'], '--poll must be'),
])
def test_follow_refuses_what_it_cannot_do(args, message):
    with pytest.raises(CommandError, match=message):
        cqrs_outbox(*args)


def test_publishers_wait_twice_as_long_each_time_the_broker_stays_away_and_start_over_once_it_answers():
    backoff = publisher.BrokerBackoff()
    away = [backoff.wait(publisher.BROKER_RETRY) for _ in range(10)]
    assert away[:4] == [0.5, 1.0, 2.0, 4.0] and away[-1] == publisher.BROKER_RETRY_MAX
    assert backoff.wait(None) is None and backoff.wait(publisher.FAILED_RETRY) == publisher.FAILED_RETRY
    assert backoff.wait(publisher.BROKER_RETRY) == publisher.BROKER_RETRY


def test_the_publisher_thread_lets_events_gather_only_while_commits_come_faster_than_its_burst_rate():
    from cqrs_celery.master.publisher import BURST_RATE, bursting

    assert not bursting(came=1, took=0.001)  # one commit at a time goes out at once
    assert not bursting(came=2, took=0.020)  # 100 a second while a drain takes 20 ms: no gathering
    assert bursting(came=12, took=0.020)  # 600 a second
    assert not bursting(came=3, took=3 / BURST_RATE * 2)  # the burst is over


def test_the_publisher_thread_measures_a_burst_over_its_whole_last_cycle_and_the_wait_since():
    """A flood whose commits slow down while the drain holds the interpreter is still a flood; a
    burst followed by a quiet second is over."""
    pace = publisher.Pace(wakes=0, now=100.0)
    assert not pace.bursting(wakes=1, now=100.5)  # the first commit after a quiet start goes out at once
    pace.drained(wakes=1, now=100.51)
    # 60 ms of gathering (36 commits), then a 40 ms drain during which only 6 came
    pace.drained(wakes=43, now=100.61)
    assert not publisher.bursting(6, 0.040)  # the drain alone: 150 a second, under the burst rate
    assert pace.bursting(wakes=43, now=100.61)  # the cycle: 42 commits in 100 ms
    assert pace.bursting(wakes=44, now=100.615)  # woken at once by the next commit: still a burst
    assert not pace.bursting(wakes=44, now=101.7)  # woken after a second without commits: over


@pytest.mark.parametrize(('interval', 'drain', 'gathers'), [
    (0.010, 0.025, False),  # 100 saves a second, drains slower than that on a slow machine
    (0.010, 0.002, False),  # 100 saves a second, fast drains
    (0.002, 0.010, True),  # 500 a second
])
def test_the_publisher_thread_gathers_a_steady_stream_only_above_the_burst_rate(interval, drain, gathers):
    pace = publisher.Pace(wakes=0, now=0.0)
    now, decisions = interval, []  # woken by the first commit

    def commits(at: float) -> int:
        return int(at / interval + 1e-9)

    for _ in range(40):
        decisions.append(pace.bursting(commits(now), now))
        began, now = now, now + drain
        pace.drained(commits(now), now)
        if commits(now) == commits(began):  # nothing came while it drained: woken by the next commit
            now = (commits(now) + 1) * interval
    assert all(decisions[5:]) if gathers else not any(decisions)


def _slices(wakes_per_slice: list[int], gathering: Callable[[Callable[[], int]], object]) -> tuple[int, int]:
    """Run ``gathering(commits)`` with commits arriving per slice as given; (slices slept, commits seen)."""
    commits = [0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        commits[0] += wakes_per_slice[len(slept) - 1] if len(slept) <= len(wakes_per_slice) else 0

    with mock.patch.object(publisher.time, 'sleep', sleep), \
            mock.patch.object(publisher.time, 'monotonic', lambda: 1000.0 + sum(slept)):
        gathering(lambda: commits[0])
    return len(slept), commits[0]


def _gathering(wakes_per_slice: list[int], came: int = 0) -> tuple[int, int]:
    """Run a publisher's gathering with commits arriving per slice as given; (slices slept, commits seen)."""
    return _slices(wakes_per_slice, lambda commits: publisher.gather(commits, came, lambda: False))


def test_a_burst_gathers_until_it_pauses_a_batch_is_full_or_the_longest_wait_passes():
    slices_max = round(publisher.GATHER_MAX / publisher.GATHER)
    assert publisher.GATHER_QUIET == 2
    # one slice without a commit is not a pause (a saving thread kept from a core for a moment)
    # the burst pauses after five slices: two more slices without a commit, then the drain
    assert _gathering([5, 5, 5, 0, 5, 0, 0, 5]) == (7, 20)
    # commits keep coming: at most GATHER_MAX of slices (a slice's commits may arrive while it ends)
    slices, seen = _gathering([5] * 100)
    assert slices in (slices_max, slices_max + 1) and seen == 5 * slices  # (+1: the clock's rounding)
    # a full batch is drained at once
    full = get_settings().master.publish_batch_size
    assert _gathering([full // 2] * 10, came=10) == (2, 2 * (full // 2))


def _gathered(gathering: publisher.Gathering, wakes_per_slice: list[int]) -> int:
    """Slices one ``Gathering.wait`` sleeps with commits arriving per slice as given."""
    return _slices(wakes_per_slice, lambda commits: gathering.wait(commits, 0, lambda: False))[0]


def test_while_a_flood_lasts_each_gathering_may_wait_twice_as_long_up_to_the_longest_then_it_starts_over():
    gathering = publisher.Gathering()
    flood = [5] * 1000  # commits in every slice, never a full batch
    limits = []
    for _ in range(5):
        limits.append(gathering.limit)
        slices = _gathered(gathering, flood)
        assert abs(slices - round(limits[-1] / publisher.GATHER)) <= 1  # it waited its whole limit
    assert limits == [publisher.GATHER_MAX, 2 * publisher.GATHER_MAX, 4 * publisher.GATHER_MAX,
                      publisher.GATHER_LONGEST, publisher.GATHER_LONGEST]
    assert publisher.GATHER_LONGEST == 4 * publisher.GATHER_MAX
    # the flood pauses: that gathering ends after its quiet slices, and the next may wait GATHER_MAX again
    assert _gathered(gathering, [5, 5, 0, 0]) == 4
    assert gathering.limit == publisher.GATHER_MAX
    # a drain without gathering (commits came slowly) starts over as well
    _gathered(gathering, flood)
    assert gathering.limit == 2 * publisher.GATHER_MAX
    gathering.reset()
    assert gathering.limit == publisher.GATHER_MAX
    # a full batch ends the gathering at once, and does not lengthen the next
    full = get_settings().master.publish_batch_size
    assert _gathered(gathering, [full] * 10) == 1 and gathering.limit == publisher.GATHER_MAX
