from django.urls import include, path

from examples.django_site import views

urlpatterns = [
    path("", views.home, name="home"),
    path("torrents", views.torrents, name="torrents"),
    path("", include("wsgi_tracker.django.urls")),  # reverse("wsgi_tracker:announce")
]
