"""The example site's URLconf with a page at /scrape, which the tracker answers first."""

from django.http import HttpResponse
from django.urls import path

from examples.django_site.urls import urlpatterns as site_urls

urlpatterns = [path("scrape", lambda request: HttpResponse("the site's scrape"), name="mine")]
urlpatterns += site_urls
