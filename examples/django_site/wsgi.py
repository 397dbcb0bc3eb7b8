"""WSGI entry point, for gunicorn and runserver (settings.WSGI_APPLICATION).

gunicorn -c deploy/gunicorn.conf.py examples.django_site.wsgi:application
"""

import os

from wsgi_tracker.django import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_site.settings")
application = get_wsgi_application()  # tracker 3/3: Django's app, the tracker in front
