"""Django integration: ``"wsgi_tracker.django"`` in ``INSTALLED_APPS``, ``settings.TRACKER``.

One tracker per process, configured from ``settings.TRACKER`` (a dict of the
settings in docs/CONFIG.md, over the tracker's file and ``WSGI_TRACKER_*``
variables) and checked when Django starts. Serve it either way:

- in ``wsgi.py``, ``application = wsgi_tracker.django.get_wsgi_application()``:
  the tracker answers its paths before Django's request machinery (announces
  are most of the traffic) and hands every other request to Django;
- ``path("", include("wsgi_tracker.django.urls"))`` in the URLconf: the same
  paths as Django views, and ``reverse("wsgi_tracker:announce_passkey", ...)``.

Views read the tracker (its ``core``, ``config``, ``stats``) with :func:`tracker`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wsgi_tracker.http.middleware import TrackerMiddleware

LABEL = "wsgi_tracker"


def tracker() -> TrackerMiddleware:
    """This process's tracker (the app must be installed and Django set up)."""
    from django.apps import apps

    return apps.get_app_config(LABEL).tracker  # type: ignore[attr-defined,no-any-return]


def get_wsgi_application() -> Any:
    """Django's WSGI application with the tracker in front of it."""
    from django.core.wsgi import get_wsgi_application as django_application

    handler = django_application()
    front = tracker()
    front.app = handler
    return front
