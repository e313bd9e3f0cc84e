"""docker-compose.yml stays in step with the example projects it runs.

No Docker is needed: the file is parsed, every example service's environment is fed to the
example's own ``settings.py`` (in a subprocess, as the container would), and each command is
checked against the modules, management commands, queues and databases that really exist.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / 'docker-compose.yml'
INIT_SQL_TARGET = '/docker-entrypoint-initdb.d/'
INFRASTRUCTURE = {'postgres', 'rabbitmq', 'redis'}
#: Variables read by Django itself rather than by settings.py, and by which command.
READ_BY_COMMAND = {'DJANGO_SUPERUSER_USERNAME': 'createsuperuser', 'DJANGO_SUPERUSER_PASSWORD': 'createsuperuser',
                   'DJANGO_SUPERUSER_EMAIL': 'createsuperuser'}
#: Broker variants the file supports through ${CELERY_BROKER_URL:-…}.
VARIANTS = {'rabbitmq (default)': {}, 'redis': {'CELERY_BROKER_URL': 'redis://redis:6379/0'}}


def interpolate(value: Any, environ: dict[str, str]) -> Any:
    """Compose's variable substitution: ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``$$``."""
    if isinstance(value, dict):
        return {k: interpolate(v, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, environ) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, operator, default = match.group('name'), match.group('op'), match.group('default') or ''
        if operator == ':-':
            return environ.get(name) or default
        if operator == '-':
            return environ.get(name, default)
        return environ.get(name, '')

    pattern = r'\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}'
    return re.sub(pattern, substitute, value.replace('$$', '\0')).replace('\0', '$')


@cache
def compose(variant: str = 'rabbitmq (default)') -> dict[str, Any]:
    return interpolate(yaml.safe_load(COMPOSE_FILE.read_text()), VARIANTS[variant])


def services(variant: str = 'rabbitmq (default)') -> dict[str, dict[str, Any]]:
    return compose(variant)['services']


def example_services(variant: str = 'rabbitmq (default)') -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services(variant).items() if 'build' in s}


def command_words(service: dict[str, Any]) -> list[str]:
    command = service.get('command', '')
    return list(command) if isinstance(command, list) else shlex.split(command)


def shell_commands(service: dict[str, Any]) -> list[list[str]]:
    """The commands a service runs, with ``sh -c "a && (b || c)"`` split into a, b and c."""
    words = command_words(service)
    if words[:2] == ['sh', '-c']:
        return [shlex.split(part) for part in re.split(r'&&|\|\||[()]', words[2]) if part.strip()]
    return [words]


def runs(service: dict[str, Any], *prefix: str) -> list[list[str]]:
    return [c for c in shell_commands(service) if c[:len(prefix)] == list(prefix)]


def option(command: list[str], name: str) -> str:
    assert name in command, f'{" ".join(command)} has no {name}'
    return command[command.index(name) + 1]


@cache
def image_paths() -> dict[str, Path]:
    """Folders of the example image (``WORKDIR`` and ``COPY`` in its Dockerfile) → checkout folders."""
    build = next(iter(example_services().values()))['build']
    dockerfile = ROOT / build['context'] / build.get('dockerfile', 'Dockerfile')
    workdir, paths = '/', {}
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if words[:1] == ['WORKDIR']:
            workdir = words[1]
        elif words[:1] == ['COPY'] and not any(w.startswith('--') for w in words):
            *sources, target = words[1:]
            for source in sources:
                destination = (Path(workdir) / target).as_posix()
                if target.endswith('/') or len(sources) > 1 or target in {'.', './'}:
                    destination = (Path(workdir) / target / Path(source).name).as_posix()
                paths[os.path.normpath(destination)] = ROOT / build['context'] / source
    return paths


def checkout_dir(service: dict[str, Any]) -> Path:
    workdir = os.path.normpath(service['working_dir'])
    assert workdir in image_paths(), f'working_dir {workdir} is not copied into the image'
    return image_paths()[workdir]


def project_of(service: dict[str, Any]) -> str:
    """The Django project a service runs: the package next to ``manage.py`` in its working dir."""
    folder = checkout_dir(service)
    return folder.name


PROBE = r'''
import importlib, json, os, sys

read = set()

class RecordingEnviron(dict):
    def get(self, key, default=None):
        read.add(key)
        return super().get(key, default)
    def __getitem__(self, key):
        read.add(key)
        return super().__getitem__(key)
    def __contains__(self, key):
        read.add(key)
        return super().__contains__(key)

os.environ = RecordingEnviron(os.environ)
settings = importlib.import_module(sys.argv[1] + '.settings')
app = importlib.import_module(sys.argv[1] + '.celery').app
print(json.dumps({
    'read': sorted(read),
    'database': settings.DATABASES['default'],
    'broker_url': settings.CELERY_BROKER_URL,
    'cqrs': {k: v for k, v in settings.CQRS.items() if isinstance(v, (str, type(None)))},
    'default_queue': getattr(settings, 'CELERY_TASK_DEFAULT_QUEUE', 'celery'),
    'beat_tasks': sorted(entry['task'] for entry in app.conf.beat_schedule.values()),
}, default=str))
'''


@cache
def probe(project: str, environment: tuple[tuple[str, str], ...], data_dir: str) -> dict[str, Any]:
    """What the example's settings make of a service's environment, read in a fresh interpreter."""
    env = {key: os.environ[key] for key in ('PATH', 'HOME', 'LANG', 'SYSTEMROOT') if key in os.environ}
    env.update(environment)
    env['EXAMPLE_DATA_DIR'] = data_dir
    result = subprocess.run([sys.executable, '-c', PROBE, project], cwd=ROOT / project, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp('compose_probe'))


def settings_of(service: dict[str, Any], data_dir: str) -> dict[str, Any]:
    environment = tuple(sorted((k, str(v)) for k, v in (service.get('environment') or {}).items()))
    return probe(project_of(service), environment, data_dir)


@cache
def management_commands(project: str, data_dir: str) -> set[str]:
    env = {key: os.environ[key] for key in ('PATH', 'HOME', 'LANG') if key in os.environ}
    env['EXAMPLE_DATA_DIR'] = data_dir
    result = subprocess.run([sys.executable, 'manage.py', 'help', '--commands'], cwd=ROOT / project, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    value = service.get('depends_on') or {}
    if isinstance(value, list):
        return {name: 'service_started' for name in value}
    return {name: (spec or {}).get('condition', 'service_started') for name, spec in value.items()}


def replica_services(variant: str = 'rabbitmq (default)') -> dict[str, dict[str, Any]]:
    return {name: s for name, s in example_services(variant).items() if project_of(s) == 'example_replica'}


def master_services(variant: str = 'rabbitmq (default)') -> dict[str, dict[str, Any]]:
    return {name: s for name, s in example_services(variant).items() if project_of(s) == 'example_master'}


def init_sql_databases() -> set[str]:
    mounts = [v for v in services()['postgres'].get('volumes', []) if INIT_SQL_TARGET in v]
    assert mounts, 'postgres mounts no init script into /docker-entrypoint-initdb.d/'
    created: set[str] = set()
    for mount in mounts:
        source = ROOT / mount.split(':')[0]
        assert source.is_file(), f'{source} does not exist'
        created |= set(re.findall(r'CREATE\s+DATABASE\s+"?(\w+)"?', source.read_text(), re.IGNORECASE))
    return created


# --- the tests ---------------------------------------------------------------------------------

def test_the_compose_file_runs_the_infrastructure_and_both_example_projects():
    assert services().keys() >= INFRASTRUCTURE
    projects = {project_of(s) for s in example_services().values()}
    assert projects == {'example_master', 'example_replica'}
    for name in INFRASTRUCTURE:
        assert 'image' in services()[name] and 'healthcheck' in services()[name], name


def test_every_example_service_builds_the_image_that_holds_the_library_and_both_examples():
    for name, service in example_services().items():
        build = service['build']
        context = ROOT / build['context']
        assert (context / build.get('dockerfile', 'Dockerfile')).is_file(), name
        assert (context / '.dockerignore').is_file()
    for source in image_paths().values():
        assert source.exists(), f'the Dockerfile copies {source}, which does not exist'
    dockerfile = (ROOT / next(iter(example_services().values()))['build']['dockerfile']).read_text()
    assert re.search(r'pip install .*(?<![\w-])\.(?=\s)', dockerfile), 'the image does not install the library'
    assert 'psycopg' in dockerfile, 'the image cannot reach PostgreSQL'
    for service in example_services().values():
        assert (checkout_dir(service) / 'manage.py').is_file()


@pytest.mark.parametrize('variant', VARIANTS)
def test_every_variable_a_service_sets_is_read_by_its_example_settings(variant, data_dir):
    for name, service in example_services(variant).items():
        read = set(settings_of(service, data_dir)['read'])
        commands = {c[2] for c in runs(service, 'python', 'manage.py') if len(c) > 2}
        for variable in service.get('environment') or {}:
            if variable in READ_BY_COMMAND:
                assert READ_BY_COMMAND[variable] in commands, f'{name} sets {variable} but never runs the command'
            else:
                assert variable in read, f'{name} sets {variable}, which {project_of(service)}/settings.py never reads'


@pytest.mark.parametrize('variant', VARIANTS)
def test_services_reach_postgres_and_the_broker_by_service_name_and_wait_for_them(variant, data_dir):
    for name, service in example_services(variant).items():
        settings = settings_of(service, data_dir)
        database = settings['database']
        assert database['ENGINE'] == 'django.db.backends.postgresql', f'{name} is not on PostgreSQL'
        broker_host = urlsplit(settings['broker_url']).hostname
        for host in (database['HOST'], broker_host):
            assert host in services(variant), f'{name} connects to {host}, which is no service'
            assert depends_on(service).get(host) == 'service_healthy', f'{name} does not wait for {host}'


def test_the_redis_variant_moves_every_service_to_redis_and_the_default_is_rabbitmq(data_dir):
    for variant, host in (('rabbitmq (default)', 'rabbitmq'), ('redis', 'redis')):
        brokers = {settings_of(s, data_dir)['broker_url'] for s in example_services(variant).values()}
        assert len(brokers) == 1, f'services disagree on the broker: {brokers}'
        assert urlsplit(brokers.pop()).hostname == host


def test_each_service_database_is_created_by_the_postgres_init_script(data_dir):
    created = init_sql_databases()
    for name, service in example_services().items():
        database = settings_of(service, data_dir)['database']['NAME']
        assert database in created, f'{name} uses database {database}, which the init script does not create'


def test_the_master_services_share_one_database_and_each_replica_service_has_its_own(data_dir):
    master = {settings_of(s, data_dir)['database']['NAME'] for s in master_services().values()}
    assert len(master) == 1
    by_queue: dict[str, set[str]] = {}
    for service in replica_services().values():
        settings = settings_of(service, data_dir)
        by_queue.setdefault(settings['cqrs']['queue'], set()).add(settings['database']['NAME'])
    assert len(by_queue) >= 2, 'the file shows fewer than two replica services'
    assert all(len(names) == 1 for names in by_queue.values()), by_queue
    databases = [names.pop() for names in by_queue.values()]
    assert len(set(databases)) == len(databases) and not master & set(databases)


def test_each_replica_worker_consumes_the_queue_its_settings_declare_and_queues_are_unique(data_dir):
    queues = []
    for name, service in replica_services().items():
        for command in runs(service, 'celery'):
            assert command[:4] == ['celery', '-A', 'example_replica', 'worker'], command
            queue = option(command, '-Q')
            assert queue == settings_of(service, data_dir)['cqrs']['queue'], name
            assert option(command, '-c') == '2'
            queues.append(queue)
    assert len(queues) >= 2 and len(set(queues)) == len(queues), queues


def test_each_replica_queue_is_declared_by_a_migrating_init_service_the_worker_waits_for(data_dir):
    inits = {}
    for name, service in replica_services().items():
        if runs(service, 'python', 'manage.py', 'cqrs_topology'):
            assert runs(service, 'python', 'manage.py', 'migrate'), f'{name} declares but never migrates'
            assert '--declare' in runs(service, 'python', 'manage.py', 'cqrs_topology')[0]
            assert service.get('restart', 'no') == 'no', f'{name} runs once'
            inits[settings_of(service, data_dir)['cqrs']['queue']] = (name, service)
    for name, service in replica_services().items():
        if runs(service, 'celery'):
            init_name, init = inits[option(runs(service, 'celery')[0], '-Q')]
            assert depends_on(service).get(init_name) == 'service_completed_successfully', name
            assert init['environment'] == service['environment'], f'{name} and {init_name} differ'


def test_master_services_start_after_their_migrations_and_after_every_replica_queue_exists():
    inits = [n for n, s in replica_services().items() if runs(s, 'python', 'manage.py', 'cqrs_topology')]
    migrate = [n for n, s in master_services().items() if runs(s, 'python', 'manage.py', 'migrate')]
    assert len(migrate) == 1
    for name, service in master_services().items():
        if name in migrate:
            continue
        needed = [migrate[0], *inits]
        for other in needed:
            assert depends_on(service).get(other) == 'service_completed_successfully', f'{name} → {other}'


def test_the_master_runs_web_worker_and_beat_and_its_worker_consumes_the_relay_queue(data_dir):
    commands = {name: shell_commands(s)[0] for name, s in master_services().items()}
    workers = [c for c in commands.values() if c[:4] == ['celery', '-A', 'example_master', 'worker']]
    beats = [c for c in commands.values() if c[:4] == ['celery', '-A', 'example_master', 'beat']]
    webs = [c for c in commands.values() if c[:3] == ['python', 'manage.py', 'runserver'] or c[:1] == ['gunicorn']]
    assert len(workers) == len(beats) == len(webs) == 1, commands
    settings = settings_of(next(iter(master_services().values())), data_dir)
    assert option(workers[0], '-Q') == settings['default_queue']
    assert 'cqrs_celery.relay_outbox' in settings['beat_tasks']
    web = next(s for s in master_services().values() if shell_commands(s)[0] == webs[0])
    assert any(str(port).endswith(':8000') for port in web.get('ports', []))


def test_commands_name_celery_apps_and_management_commands_that_exist(data_dir):
    for name, service in example_services().items():
        project = project_of(service)
        for command in shell_commands(service):
            if command[0] == 'celery':
                module = checkout_dir(service) / option(command, '-A') / 'celery.py'
                assert module.is_file() and re.search(r'^app = Celery\(', module.read_text(), re.M), name
            elif command[:2] == ['python', 'manage.py']:
                assert command[2] in management_commands(project, data_dir), f'{name}: no command {command[2]}'
            else:
                assert command[0] == 'echo', f'{name} runs {command}'


def test_depends_on_names_services_with_conditions_compose_knows():
    conditions = {'service_started', 'service_healthy', 'service_completed_successfully'}
    for name, service in services().items():
        for other, condition in depends_on(service).items():
            assert other in services() and other != name, f'{name} → {other}'
            assert condition in conditions
            if condition == 'service_healthy':
                assert 'healthcheck' in services()[other], f'{other} has no healthcheck'


def test_the_file_is_valid_for_docker_compose_where_it_is_installed():
    if shutil.which('docker-compose'):
        command = ['docker-compose']
    elif shutil.which('docker') and subprocess.run(['docker', 'compose', 'version'],
                                                   capture_output=True).returncode == 0:
        command = ['docker', 'compose']
    else:
        pytest.skip('neither docker-compose nor the docker compose plugin is installed')
    result = subprocess.run([*command, '-f', str(COMPOSE_FILE), 'config', '-q'], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, env={**os.environ, 'CELERY_BROKER_URL': ''})
    assert result.returncode == 0, result.stderr
