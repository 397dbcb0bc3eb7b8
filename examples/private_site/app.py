"""A private tracker site: members, their passkeys and a ratio page, over Flask and SQLite.

The tracker runs inside the site (``Tracker(app)``); ``tracker.toml`` makes it
private, checks passkeys against the ``users`` table and credits each
member's upload and download from the tracker's own accounting
(``accounts.credit``). Run it with its tracker on both protocols::

    PRIVATE_SITE_DB=site.sqlite3 python -m examples.private_site.app add alice
    PRIVATE_SITE_DB=site.sqlite3 wsgi-tracker serve \\
        --app examples.private_site.app:app --config examples/private_site/tracker.toml
"""

from __future__ import annotations

import sys
from urllib.parse import urlsplit

from flask import Flask, abort, render_template_string, request
from markupsafe import Markup

from examples.private_site import accounts
from wsgi_tracker.flask import Tracker, current_tracker

app = Flask(__name__)
tracker = Tracker(app)  # settings from tracker.toml (serve passes WSGI_TRACKER_CONFIG)
accounts.create()

LAYOUT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title></head>
<body><nav><a href="/">Ratios</a></nav><h1>{{ title }}</h1>
{{ body }}
</body></html>"""

RATIOS = """<table>
<tr><th>Member</th><th>Uploaded</th><th>Downloaded</th><th>Ratio</th><th>Seeding</th></tr>
{% for a in members %}<tr data-member="{{ a.name }}">
<td><a href="/members/{{ a.name }}">{{ a.name }}</a></td>
<td data-field="uploaded">{{ a.uploaded }}</td><td data-field="downloaded">{{ a.downloaded }}</td>
<td data-field="ratio">{{ "%.2f"|format(a.ratio) if a.ratio is not none else "-" }}</td>
<td data-field="seeding">{{ a.seeding_seconds|round|int }} s</td></tr>
{% endfor %}</table>"""

MEMBER = """<p>Your announce URLs (keep them private: the passkey is your login):</p>
<ul><li><code>{{ http_url }}</code></li><li><code>{{ udp_url }}</code></li></ul>"""


def page(title: str, template: str, **values: object) -> str:
    body = Markup(render_template_string(template, **values))  # already escaped
    return render_template_string(LAYOUT, title=title, body=body)


@app.get("/")
def ratios() -> str:
    return page("Ratios", RATIOS, members=accounts.accounts())


@app.get("/members/<name>")
def member(name: str) -> str:
    account = accounts.account(name)
    if account is None:
        abort(404)
    config = current_tracker.config
    host = urlsplit(request.host_url).hostname or "localhost"
    host = f"[{host}]" if ":" in host else host
    return page(
        name,
        MEMBER,
        http_url=f"{request.host_url.rstrip('/')}{config.announce_path}/{account.passkey}",
        udp_url=f"udp://{host}:{config.udp_port}/announce/{account.passkey}",
    )


def main(argv: list[str]) -> int:
    """``python -m examples.private_site.app add NAME``: a new member and their passkey."""
    if len(argv) != 2 or argv[0] != "add":
        print("usage: python -m examples.private_site.app add NAME", file=sys.stderr)
        return 2
    print(accounts.add_user(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
