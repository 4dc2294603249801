"""The HTML report as a browser shows it: headless Chromium (Debian's ``chromium`` package,
installed by scripts/install-lab-deps.sh) renders the report of a real stored sweep (the
golden lab database: three minutes of sweeps through the namespace lab's censor), and the
rendered page must carry the headline and readable axes, and its screenshot must show the
charts. Skipped with the reason where Chromium is missing, except in CI
(``BLOCKWATCH_REQUIRE_LAB=1``), where it must run. ``BLOCKWATCH_KEEP_SCREENSHOT=FILE`` keeps
the screenshot for a human to look at."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from blockwatch.cli import main
from blockwatch.reports.charts import COLOURS
from blockwatch.storage import open_store

GOLDEN = Path(__file__).parent / "data" / "golden" / "blockwatch.db.gz"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WIDTH, HEIGHT = 1280, 2600

pytestmark = pytest.mark.skipif(
    CHROMIUM is None and os.environ.get("BLOCKWATCH_REQUIRE_LAB") != "1",
    reason="chromium is not installed (apt-get install chromium, or "
           "scripts/install-lab-deps.sh)")


def _chromium(*args: str) -> subprocess.CompletedProcess[bytes]:
    assert CHROMIUM, "BLOCKWATCH_REQUIRE_LAB=1 but chromium is not installed"
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--no-first-run", "--disable-extensions", "--force-device-scale-factor=1", *args],
        capture_output=True, timeout=120, check=True)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("browser")
    db = tmp / "golden.db"
    with gzip.open(GOLDEN, "rb") as src, db.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    open_store(str(db)).close()  # upgrade the older schema (reports only read)
    out = tmp / "report.html"
    assert main(["report", "html", "--db", str(db), "-o", str(out),
                 "--vantage", "lab-censored", "--vantage", "lab-control",
                 "-s", "protonvpn", "-s", "facebook", "-s", "youtube"]) == 0
    return out


def test_the_rendered_page_has_the_headline_and_readable_axes(page: Path) -> None:
    dom = _chromium("--dump-dom", page.as_uri()).stdout.decode()
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))
    assert "What is blocked where" in text and "No change of state was detected" in text
    assert re.search(r"1 service is blocked .*protonvpn.* at lab-censored", text)
    labels = re.findall(r"<text[^>]*>([^<]*)</text>", dom)  # the charts' SVG text
    assert labels.count("runs per minute") == 6  # 3 services x 2 vantages, each panel
    assert labels.count("time (UTC)") == 3
    # the time axis spans the three minutes of data, not a day
    assert {"04:53", "04:54", "04:55", "04:56"} <= set(labels)
    assert not {"03:00", "12:00", "21:00"} & set(labels)
    assert dom.index("What is blocked where") < dom.index("runs per minute") < dom.index(
        "How the runs were configured")


def test_the_screenshot_shows_the_charts(page: Path, tmp_path: Path) -> None:
    from PIL import Image

    shot = tmp_path / "shot.png"
    _chromium(f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}", page.as_uri())
    with Image.open(shot) as img:
        rgb = img.convert("RGB")
    assert rgb.size == (WIDTH, HEIGHT)
    colours = rgb.getcolors(maxcolors=WIDTH * HEIGHT) or []
    count = {c: n for n, c in colours}
    assert count.get((0xfa, 0xfa, 0xfa), 0) > 10_000  # the page's own background...
    assert max(count.values()) < 0.9 * WIDTH * HEIGHT  # ...and not one colour for all

    def pixels(hex_colour: str) -> int:
        return count.get(tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)), 0)

    # the bars of the charts: "ok" green and "blocked" red areas, drawn, not blank
    assert pixels(COLOURS["ok"]) > 20_000 and pixels(COLOURS["blocked"]) > 2_000
    # and the axes: dark text and lines around them
    dark = sum(n for c, n in count.items() if max(c) < 0x60)
    assert dark > 10_000
    if os.environ.get("BLOCKWATCH_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["BLOCKWATCH_KEEP_SCREENSHOT"])
