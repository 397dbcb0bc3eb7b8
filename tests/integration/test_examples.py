"""The example sites under a real gunicorn: their own pages answer beside /announce and /scrape."""

from __future__ import annotations

import re
from collections.abc import Iterator

import bencodepy
import pytest
from servers import REPO_ROOT, announce_url, gunicorn, http_get, scrape_url

from examples.catalogue import CATALOGUE
from wsgi_tracker.running import gunicorn_conf

pytestmark = pytest.mark.integration

APPS = {"flask": "examples.flask_site.app:app", "plain-wsgi": "examples.plain_wsgi:application"}


@pytest.fixture(scope="module", params=sorted(APPS))
def site(request: pytest.FixtureRequest) -> Iterator[str]:
    """One worker of the shipped worker class, so every page reads the replica it announced to."""
    with gunicorn(APPS[request.param], worker_class=gunicorn_conf.worker_class) as server:
        yield server.url


def test_home_page_answers_and_names_the_announce_url(site: str) -> None:
    status, body = http_get(site + "/")
    assert status == 200
    assert b"Example torrent site" in body
    assert f"{site}/announce".encode() in body


def test_unknown_page_is_the_sites_own_404(site: str) -> None:
    status, body = http_get(site + "/no-such-page")
    assert status == 404
    assert b"wsgi-tracker" not in body  # the site answered, not the tracker


def test_announce_and_scrape_work_beside_the_site(site: str) -> None:
    ih = b"example-site-scrape!"
    status, body = http_get(announce_url(site + "/announce", ih, b"s" * 20, 6881, 0))
    assert status == 200
    assert bencodepy.decode(body)[b"interval"] > 0
    status, body = http_get(scrape_url(site + "/scrape", ih))
    assert status == 200
    assert bencodepy.decode(body)[b"files"][ih][b"complete"] == 1


def test_torrents_page_shows_live_counts_from_the_tracker(site: str) -> None:
    published = CATALOGUE[1]
    before = http_get(site + "/torrents")[1]
    assert published.name.encode() in before
    row = f"<code>{published.info_hash.hex()}</code></td><td>".encode()
    assert row + b"0</td><td>0</td>" in before.replace(b"\n", b"")

    for n, left in enumerate((0, 0, 500)):
        peer = f"page-peer-{n}".encode().ljust(20, b"-")
        status, _ = http_get(
            announce_url(site + "/announce", published.info_hash, peer, 7000, left)
        )
        assert status == 200

    after = http_get(site + "/torrents")[1].replace(b"\n", b"")
    assert row + b"2</td><td>1</td>" in after


SNIPPET = re.compile(r"<!-- snippet: (\S+) -->\n```python\n(.*?)```", re.S)


def test_embedding_md_snippets_are_in_the_examples_these_tests_run() -> None:
    """Each snippet in docs/EMBEDDING.md is the code of the example it names, in order
    (``...`` marks an elision), so the page shows what the tests run."""
    text = (REPO_ROOT / "docs" / "EMBEDDING.md").read_text()
    snippets = SNIPPET.findall(text)
    assert len(snippets) >= 8
    for name, code in snippets:
        source = (REPO_ROOT / name).read_text().splitlines()
        at = 0
        for line in code.splitlines():
            if not line.strip() or line.strip() == "...":
                continue
            assert line in source[at:], f"{name} no longer has (in this order): {line!r}"
            at = source.index(line, at) + 1
