"""The built documentation, looked at as a reader would: pages rendered in headless Chromium.

The site is built with ``mkdocs build --strict`` into a temporary folder and served on
localhost; each page must render with its main content, without a console message from its
scripts and without a request the server could not answer (a missing figure, stylesheet or
script). Skipped where Chromium or MkDocs is not installed; ``.ci/run`` installs both.
"""

from __future__ import annotations

import html
import http.server
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

pytest.importorskip("mkdocs", reason="install ziggurat[docs]")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs chromium (apt-get install chromium)"
)

ROOT = Path(__file__).resolve().parents[1]
FLAGS = (
    "--headless",
    "--no-sandbox",  # root in CI
    "--disable-gpu",
    "--disable-background-networking",  # no connections outside localhost
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--enable-logging=stderr",  # console messages of the page's scripts, as CONSOLE lines
    "--v=0",
    "--virtual-time-budget=5000",  # let the page's scripts run before the DOM is dumped
)


NO_ICON = '<link rel="icon" href="data:,">'
"""For the test pages: without an icon the browser asks for /favicon.ico (a 404)."""


class _Recorder(http.server.SimpleHTTPRequestHandler):
    """Serves the site and records every request's path and status."""

    requests: list[tuple[str, int]]

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.requests.append((self.path, int(code) if str(code).isdigit() else 0))

    def log_message(self, format: str, *args: object) -> None:
        pass  # recorded above; nothing on stderr


class Site:
    """A folder served on localhost, with the log of what was asked of it."""

    def __init__(self, root: Path) -> None:
        self.requests: list[tuple[str, int]] = []
        handler = type("Handler", (_Recorder,), {"requests": self.requests})
        self.server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), partial(handler, directory=str(root))
        )
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def render(site: Site, page: str, profile: Path) -> str:
    """The page's DOM after its scripts ran; fails on a console message or a failed request.

    Returns the visible text of the page's main content (``<article>``).
    """
    assert CHROMIUM is not None
    site.requests.clear()
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", site.url + page]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, f"{page}: console messages:\n" + "\n".join(console)
    failed = [(path, code) for path, code in site.requests if code >= 400]
    assert not failed, f"{page}: requests that failed: {failed}"
    match = re.search(r"<article\b[^>]*>(.*?)</article>", done.stdout, re.S)
    assert match, f"{page}: no <article> (main content) in the rendered page"
    text = html.unescape(re.sub(r"<[^>]+>", " ", match.group(1)))
    text = " ".join(text.split())
    assert len(text) > 200, f"{page}: main content is empty or nearly: {text!r}"
    return match.group(1)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    out = tmp_path_factory.mktemp("site")
    build = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)]
    done = subprocess.run(build, cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    served = Site(out)
    yield served
    served.close()


def test_home_page_renders(site: Site, tmp_path: Path) -> None:
    article = render(site, "index.html", tmp_path)
    assert "<h1" in article and "Two commands" in article
    assert 'src="figures/reweight.png"' in article  # and the request for it succeeded
    assert any(path.endswith("/figures/reweight.png") for path, _ in site.requests)


def test_tutorial_renders_with_its_figure_and_code(site: Site, tmp_path: Path) -> None:
    article = render(site, "tutorials/reweight/", tmp_path)
    assert "figures/reweight.png" in article
    assert "class</span> <span" in article or "Classifier" in article  # the included source
    assert "--8&lt;--" not in article and "--8<--" not in article  # every snippet resolved
    assert any(path.endswith("/figures/reweight.png") for path, code in site.requests)


def test_api_page_renders_every_public_name(site: Site, tmp_path: Path) -> None:
    import ziggurat.hypergradient as module

    article = render(site, "api/hypergradient/", tmp_path)
    public = {n for n in vars(module) if not n.startswith("_") and n != "annotations"}
    public -= {k for k, v in vars(module).items() if type(v).__name__ == "module"}
    documented = set(re.findall(r'id="ziggurat\.hypergradient\.(\w+)"', article))
    assert public <= documented, sorted(public - documented)


def test_a_blank_page_fails(tmp_path: Path) -> None:
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "index.html").write_text(
        f"<html><head>{NO_ICON}</head><body><article> </article></body></html>"
    )
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "index.html").write_text(
        f"<html><head>{NO_ICON}</head><body><article>{'text ' * 100}</article>"
        "<script>console.error('boom')</script></body></html>"
    )
    (tmp_path / "missing").mkdir()
    (tmp_path / "missing" / "index.html").write_text(
        f"<html><head>{NO_ICON}</head><body><article>{'text ' * 100}"
        "<img src='gone.png'></article></body></html>"
    )
    served = Site(tmp_path)
    try:
        with pytest.raises(AssertionError, match="main content is empty"):
            render(served, "blank/", tmp_path / "profile")
        with pytest.raises(AssertionError, match="console messages"):
            render(served, "broken/", tmp_path / "profile")
        with pytest.raises(AssertionError, match=r"requests that failed: \[\('/missing/gone.png'"):
            render(served, "missing/", tmp_path / "profile")
    finally:
        served.close()
