"""``path("", include("wsgi_tracker.django.urls"))``: the tracker's paths in the URLconf.

For ``reverse("wsgi_tracker:announce_passkey", args=[passkey])`` in views and
templates, and for serving the tracker through Django when ``wsgi.py`` keeps
Django's own application (slower: every announce then passes Django's middleware).
"""

from __future__ import annotations

from typing import cast
from wsgiref.types import StartResponse

from django.http import HttpRequest, HttpResponse
from django.urls import path

from wsgi_tracker.django import LABEL, tracker

app_name = LABEL


def answer(request: HttpRequest, **_: str) -> HttpResponse:
    """The tracker's answer to this request, as a Django response."""
    sent: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], _exc: object = None) -> None:
        sent.append((status, headers))

    environ = request.environ  # a WSGIRequest's: the server's environ
    body = b"".join(tracker()(environ, cast(StartResponse, start_response)))
    status, headers = sent[-1]
    response = HttpResponse(body, status=int(status.split()[0]))
    for name, value in headers:
        response[name] = value
    return response


urlpatterns = [
    path(rule.lstrip("/"), answer, name=endpoint) for endpoint, rule in tracker().routes().items()
]
