"""The example Django site plus a site URL the tracker shadows (test_django.py)."""

from examples.django_site.settings import *  # noqa: F403

ROOT_URLCONF = "django_urls_shadow"
