"""The example site's URLconf plus an upload view that reads the request body."""

import hashlib

from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from examples.django_site.urls import urlpatterns as site_urls


@csrf_exempt
def upload(request: HttpRequest) -> HttpResponse:
    data = request.body
    return HttpResponse(f"{len(data)} {hashlib.sha1(data).hexdigest()}")


urlpatterns = [path("upload", upload, name="upload"), *site_urls]
