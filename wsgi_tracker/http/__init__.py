"""The HTTP side: the tracker codec, the HTTP/1.1 codec, the WSGI shell, the gunicorn worker."""
