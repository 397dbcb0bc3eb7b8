"""The example Django site with an upload view (test_django.py: broken bodies)."""

from examples.django_site.settings import *  # noqa: F403

ROOT_URLCONF = "django_urls_upload"
