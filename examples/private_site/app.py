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

from flask import Flask, abort, render_template, request

from examples.private_site import accounts
from wsgi_tracker.flask import Tracker, current_tracker

app = Flask(__name__)
tracker = Tracker(app)  # settings from tracker.toml (serve passes WSGI_TRACKER_CONFIG)
accounts.create()


@app.get("/")
def ratios() -> str:
    return render_template("ratios.html", title="Ratios", members=accounts.accounts())


@app.get("/members/<name>")
def member(name: str) -> str:
    account = accounts.account(name)
    if account is None:
        abort(404)
    config = current_tracker.config
    host = urlsplit(request.host_url).hostname or "localhost"
    host = f"[{host}]" if ":" in host else host
    return render_template(
        "member.html",
        title=name,
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
