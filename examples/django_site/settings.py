"""Settings of the example Django site: the tracker is one installed app and one dict."""

SECRET_KEY = "example-only-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
INSTALLED_APPS = ["wsgi_tracker.django"]  # tracker 1/3
TRACKER = {"numwant_max": 100}  # tracker 2/3: any setting of docs/CONFIG.md
ROOT_URLCONF = "examples.django_site.urls"
WSGI_APPLICATION = "examples.django_site.wsgi.application"
DATABASES: dict[str, dict[str, str]] = {}  # the site has no models
USE_TZ = True
TIME_ZONE = "UTC"
