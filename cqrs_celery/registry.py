"""CQRS_ID → model, one registry for each side, filled as model classes are prepared."""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from cqrs_celery.exceptions import ConfigurationError, UnknownCQRSIdError

logger = logging.getLogger(__name__)


class Registry:
    """Models of one side (master or replica) by CQRS_ID; duplicates are kept for system checks."""

    def __init__(self, side: str) -> None:
        self.side = side
        self._models: dict[str, Any] = {}
        self._all: defaultdict[str, list[Any]] = defaultdict(list)

    def register(self, model: Any) -> None:
        cqrs_id = model.CQRS_ID
        known = self._all[cqrs_id]
        # re-declaring the same class path (tests, reloads) replaces it rather than duplicating, and a
        # subclass (a concrete model of an abstract replica, a proxy registered by hand) replaces its base
        known[:] = [m for m in known if _path(m) != _path(model) and not _is_base(m, model)] + [model]
        self._models[cqrs_id] = model

    def get(self, cqrs_id: str) -> Any:
        """The model registered for ``cqrs_id``.

        Raises:
            UnknownCQRSIdError: nothing is registered under that id on this side.
        """
        try:
            return self._models[cqrs_id]
        except KeyError:
            raise UnknownCQRSIdError(
                f'No {self.side} model has CQRS_ID {cqrs_id!r} in this service '
                f'(known: {", ".join(sorted(self._models)) or "none"}).'
            ) from None

    def get_model_by_cqrs_id(self, cqrs_id: str) -> Any | None:
        """django-cqrs's name for :meth:`get`: the model, or ``None`` (logged as an error) when unknown."""
        model = self._models.get(cqrs_id)
        if model is None:
            logger.error('No %s model with such CQRS_ID: %s.', self.side, cqrs_id)
        return model

    def models(self) -> list[Any]:
        return list(self._models.values())

    def ids(self) -> list[str]:
        return sorted(self._models)

    def duplicates(self) -> dict[str, list[Any]]:
        return {cqrs_id: list(models) for cqrs_id, models in self._all.items() if len(models) > 1}

    def __contains__(self, cqrs_id: object) -> bool:
        return cqrs_id in self._models


def _is_base(candidate: Any, model: Any) -> bool:
    return isinstance(candidate, type) and isinstance(model, type) and candidate is not model \
        and issubclass(model, candidate)


def _path(model: Any) -> str:
    return f'{model.__module__}.{model.__qualname__}'


#: Longest CQRS_ID: the outbox and tombstone tables keep it in a 200-character column, and it is
#: part of the broker's exchange name (``cqrs.<CQRS_ID>``, at most 255 bytes on RabbitMQ).
MAX_CQRS_ID_LENGTH = 200


def require_cqrs_id(sender: type[Any]) -> None:
    """Raise ``ConfigurationError`` naming the class unless it has a non-empty string CQRS_ID."""
    cqrs_id = getattr(sender, 'CQRS_ID', None)
    if not isinstance(cqrs_id, str) or not cqrs_id.strip() or len(cqrs_id) > MAX_CQRS_ID_LENGTH:
        label = getattr(getattr(sender, '_meta', None), 'label', sender.__qualname__)
        raise ConfigurationError(
            f'{label}.CQRS_ID must be a non-empty string of at most {MAX_CQRS_ID_LENGTH} characters naming this '
            f'model across services (e.g. CQRS_ID = "book"), not {cqrs_id!r}.'
        )


MasterRegistry = Registry('master')
ReplicaRegistry = Registry('replica')
