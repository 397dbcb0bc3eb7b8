"""The example Django site with a mistyped tracker setting (test_django.py)."""

from examples.django_site.settings import *  # noqa: F403

TRACKER = {"numwant_mx": 5}
