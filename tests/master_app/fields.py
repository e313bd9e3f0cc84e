"""Custom model fields of the test project: one with its own text form, one without."""

from django.db import models


class Blob:
    def __init__(self, text):
        self.text = text

    def __eq__(self, other):
        return isinstance(other, Blob) and other.text == self.text


class BlobField(models.TextField):
    """Stores a ``Blob``; ``value_to_string`` says how it travels."""

    def from_db_value(self, value, expression, connection):
        return None if value is None else Blob(value)

    def to_python(self, value):
        return value if value is None or isinstance(value, Blob) else Blob(value)

    def get_prep_value(self, value):
        return None if value is None else value.text

    def value_to_string(self, obj):
        value = self.value_from_object(obj)
        return None if value is None else f'blob:{value.text}'


class OpaqueField(models.TextField):
    """Stores a ``Blob`` but has no text form of its own: cqrs_celery must refuse to send it."""

    def from_db_value(self, value, expression, connection):
        return None if value is None else Blob(value)

    def get_prep_value(self, value):
        return None if value is None else value.text
