"""kombu's filesystem transport with atomic message files: the embedded broker for demos and tests.

kombu writes a message file in place, so a consumer polling the folder can move and read it
before it is complete; the JSON error that follows stops the consuming worker. This transport
writes each message under a name consumers ignore and renames it into place, which is atomic on
one filesystem.

``CELERY_BROKER_URL = 'filesystem://'`` is all a project sets: :func:`configure` selects this
transport and, for every folder the project leaves unset, a shared absolute folder (kombu's own
defaults, ``data_in`` and ``data_out``, are relative to each process's working directory, so two
projects would never see each other's messages). Set ``CELERY_BROKER_TRANSPORT_OPTIONS`` folders
to use others; the same ones in every project.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    """Writes each message file completely before it becomes visible to consumers."""

    # kombu's stubs disagree between its two base classes on this signature; this one is filesystem's.
    def _put(self, queue: str, payload: dict[str, Any], **kwargs: Any) -> None:  # type: ignore[override]
        name = f'{int(round(time.monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg'
        final = os.path.join(self.data_folder_out, name)
        # A leading dot: kombu's consumers match '<anything>.<queue>.msg' after the first dot only.
        partial = os.path.join(self.data_folder_out, f'.{name}.partial')
        try:
            with open(partial, 'wb') as handle:
                handle.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f'Cannot add file {final!r} to directory') from exc


class Transport(filesystem.Transport):
    """``filesystem://`` with :class:`Channel`."""

    Channel = Channel


#: Environment variable naming the shared broker folder (default: :func:`default_folder`).
FOLDER_ENV = 'CQRS_FILESYSTEM_BROKER'

#: The transport :func:`configure` selects for ``filesystem://`` when the project names none.
TRANSPORT = 'cqrs_celery.filesystem:Transport'

#: Transport options naming folders, and where each lives under the shared folder.
FOLDER_OPTIONS = {'data_folder_in': 'messages', 'data_folder_out': 'messages', 'control_folder': 'control'}


def default_folder() -> str:
    """The folder every project of this user on this machine shares: ``$CQRS_FILESYSTEM_BROKER``,
    else ``cqrs_celery_broker-<user id>`` in the system's temporary directory."""
    configured = os.environ.get(FOLDER_ENV)
    if configured:
        return os.path.abspath(configured)
    owner = os.getuid() if hasattr(os, 'getuid') else os.environ.get('USERNAME', 'user')
    return os.path.join(tempfile.gettempdir(), f'cqrs_celery_broker-{owner}')


def is_filesystem(app: Any) -> bool:
    """True when the app's broker is kombu's filesystem transport (or ours)."""
    url = str(app.conf.broker_url or '')
    transport = str(app.conf.broker_transport or '')
    return url.split(':', 1)[0] == 'filesystem' or transport in ('filesystem', TRANSPORT) \
        or transport.endswith('filesystem:Transport')


def configure(app: Any) -> None:
    """Give a ``filesystem://`` app this transport and shared absolute folders where it sets none.

    Idempotent and cheap after the first call; does nothing for other brokers. Creates the folders
    (kombu fails on missing ones).
    """
    conf = app.conf
    url = str(conf.broker_url)
    if getattr(app, '_cqrs_filesystem_checked', None) == url:
        return
    app._cqrs_filesystem_checked = url
    if not is_filesystem(app):
        return
    if not conf.broker_transport:
        conf.broker_transport = TRANSPORT
    options = dict(conf.broker_transport_options or {})
    missing = {key: sub for key, sub in FOLDER_OPTIONS.items() if not options.get(key)}
    if missing:
        base = default_folder()
        options.update({key: os.path.join(base, sub) for key, sub in missing.items()})
        conf.broker_transport_options = options
    ensure_folders(options)


def ensure_folders(options: dict[str, Any]) -> None:
    """Create the folders of kombu's filesystem transport named in ``options`` (kombu's defaults if not)."""
    for key, default in (('data_folder_in', 'data_in'), ('data_folder_out', 'data_out'),
                         ('control_folder', 'control'), ('processed_folder', 'processed')):
        if key != 'processed_folder' or options.get('store_processed'):
            os.makedirs(options.get(key) or default, exist_ok=True)


def folders(app: Any) -> dict[str, str]:
    """The folders the app's filesystem broker uses, as kombu resolves them (relative ones as written)."""
    options = app.conf.broker_transport_options or {}
    return {key: str(options.get(key) or default) for key, default in
            (('data_folder_in', 'data_in'), ('data_folder_out', 'data_out'), ('control_folder', 'control'))}
