"""What applying an envelope did: the outcome names the task reports and the signal carries."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any


class Outcome(str, enum.Enum):
    """What applying an envelope did."""

    CREATED = 'created'
    UPDATED = 'updated'
    DELETED = 'deleted'
    TOMBSTONED = 'tombstoned'  # DELETE of a row this replica never had: remembered, nothing to delete
    HANDLED = 'handled'  # a RawReplicaMixin / CQRS_NO_DB_OPERATIONS model's own code ran
    STALE = 'stale'
    DUPLICATE = 'duplicate'
    NOT_FOR_ME = 'not_for_me'


#: Outcomes that change nothing: a model method that returns a falsy value for them has not failed.
NO_CHANGE = frozenset({Outcome.STALE, Outcome.DUPLICATE, Outcome.TOMBSTONED, Outcome.NOT_FOR_ME})


@dataclasses.dataclass(frozen=True)
class Result:
    outcome: Outcome
    instance: Any = None
