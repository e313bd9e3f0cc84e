"""Requests made by a logged-in user change rows as ``admin:<username>`` (see ``cqrs.py``)."""

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from library.cqrs import changed_by


class ChangedByMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = getattr(request, 'user', None)
        if user is None or not user.is_authenticated:
            return self.get_response(request)
        with changed_by(f'admin:{user.get_username()}'):
            return self.get_response(request)
