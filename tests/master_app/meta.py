"""``CQRS['master']['meta_function']`` of the test project."""

from typing import Any


def meta_function(instance: Any, **kwargs: Any) -> dict[str, Any]:
    return {'origin': 'tests', 'model': instance._meta.model_name}
