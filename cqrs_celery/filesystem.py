"""kombu's filesystem transport with atomic message files: the embedded broker for demos and tests.

kombu writes a message file in place, so a consumer polling the folder can move and read it
before it is complete; the JSON error that follows stops the consuming worker. This transport
writes each message under a name consumers ignore and renames it into place, which is atomic on
one filesystem. Select it next to the ``filesystem://`` URL::

    CELERY_BROKER_URL = 'filesystem://'
    CELERY_BROKER_TRANSPORT = 'cqrs_celery.filesystem:Transport'
"""

from __future__ import annotations

import os
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
