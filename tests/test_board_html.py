"""The browsable board (index.html): rendered from records, then opened in real headless Chromium.

The browser tests drive Debian's ``chromium`` with its ``chromium-driver`` through selenium
(``.ci/run`` installs both); where they are missing these tests skip, saying what to install.
They open the page of the published board (``leaderboard/results``, linked into a temporary
folder) from ``file://``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from embench.board_html import (
    HTML_FILE,
    markdown_to_html,
    render_html,
    reproduce_command,
    write_html,
)
from embench.leaderboard import group_records
from embench.records import load_records

BOARD = Path(__file__).resolve().parents[1] / "leaderboard"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def board_page(tmp_path_factory):
    """The published board's page, written into a temporary folder beside its records."""
    records = load_records([BOARD / "results"]).records
    assert records, "the published board has no records"
    folder = tmp_path_factory.mktemp("board")
    (folder / "results").symlink_to(BOARD / "results")
    for plot in BOARD.glob("*.png"):
        shutil.copy(plot, folder / plot.name)
    return write_html(folder), records


def test_every_group_and_cell_is_on_the_page(board_page):
    path, records = board_page
    text = path.read_text()
    groups = group_records(records)
    assert text.count("<article class=group") == len(groups)
    for group in groups:
        for record in group.records:  # each record's detail links its record and pictures
            assert f"results/{record.task}/{record.pictures['show']}" in text
            assert reproduce_command(record) in text or "python:" in str(record.encoder_spec)
    assert "<script src" not in text and "<link" not in text  # nothing fetched
    assert "http://" not in text and "https://" not in text


def test_publishing_writes_the_page_beside_the_markdown(tmp_path):
    import embench.sweep
    from embench.board_html import publish

    assert embench.sweep.publish is publish  # reproduce and sweep publish the page too

    source = sorted((BOARD / "results").rglob("*.json"))[:1]
    assert source, "the published board has no records"
    markdown = publish(source, tmp_path / "board", plots=False)
    page = markdown.with_name(HTML_FILE)
    assert page.is_file() and "<table" in page.read_text()


def test_marks_and_paper_numbers_match_the_markdown_board():
    from embench.leaderboard import render_markdown

    records = load_records([BOARD / "results"]).records
    assert records, "the published board has no records"
    page = render_html(records, results_dir=BOARD / "results")
    markdown = render_markdown(records, results_dir=BOARD / "results")
    for mark in ("✗", "↻", "†", "paper "):
        assert (mark in markdown) == (mark in page), mark


def test_markdown_blocks_become_tables_and_text():
    html = markdown_to_html("**Title** with `code`\n\n| a | b |\n|---|---|\n| 1 | **2** |\n\n"
                            "- one\n  more\n- two\n\n```bash\nembench run <x>\n```")
    assert "<b>Title</b> with <code>code</code>" in html
    assert "<table class=sortable>" in html and "<td><b>2</b></td>" in html
    assert "<li>one more</li><li>two</li>" in html
    assert "<pre><code>embench run &lt;x&gt;</code></pre>" in html


# -- in a real browser ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium from the distribution's packages, driven by selenium."""
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("needs headless Chromium: apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver",
                                    reason="needs selenium: pip install -e '.[dev]'")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _broken_images(driver, root: str) -> list[str]:
    """The pictures under ``root`` (a CSS selector) that did not load, once all have tried."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 30).until(lambda d: d.execute_script(
        f"return Array.from(document.querySelectorAll('{root} img'))"
        ".every(function (i) {{ return i.complete; }});"))
    return driver.execute_script(
        f"return Array.from(document.querySelectorAll('{root} img'))"
        ".filter(function (i) { return !(i.naturalWidth > 0); })"
        ".map(function (i) { return i.getAttribute('src'); });")


def test_the_page_works_in_chromium(board_page, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    path, records = board_page
    groups = group_records(records)
    browser.get(path.as_uri())
    assert browser.title == "embench leaderboard"

    # Every table has its rows: one per z in the MLP and linear tables, one per run below.
    articles = browser.find_elements(By.CSS_SELECTOR, "article.group")
    assert len(articles) == len(groups)
    for article, group in zip(articles, groups, strict=True):
        zs = {r.z_dim for r in group.records}
        boards = article.find_elements(By.CSS_SELECTOR, "table.board")
        assert len(boards) == 2
        for table in boards:
            assert len(table.find_elements(By.CSS_SELECTOR, "tbody tr")) == len(zs)
            assert len(table.find_elements(By.CSS_SELECTOR, "thead th")) == \
                1 + len(group.encoders())
        runs = article.find_element(By.CSS_SELECTOR, "table.runs")
        assert len(runs.find_elements(By.CSS_SELECTOR, "tbody tr")) == len(group.records)
    for table in browser.find_elements(By.CSS_SELECTOR, "table"):
        if table.is_displayed():
            assert table.find_elements(By.CSS_SELECTOR, "tbody tr td"), table.text
    assert not _broken_images(browser, "body")

    # Clicking a header sorts by that column, and again the other way.
    runs = articles[0].find_element(By.CSS_SELECTOR, "table.runs")
    header = runs.find_elements(By.CSS_SELECTOR, "thead th")[3]
    assert header.text.startswith("MLP")

    def column() -> list[float]:
        return [float(td.get_attribute("data-sort")) for td in
                runs.find_elements(By.CSS_SELECTOR, "tbody tr td:nth-child(4)")]

    before = column()
    header.click()
    ascending = column()
    header.click()
    descending = column()
    assert ascending == sorted(before) and descending == sorted(before, reverse=True)
    if len(set(before)) > 1:
        assert ascending != before or descending != before  # the order changed
    assert header.get_attribute("aria-sort") == "descending"

    # The filter hides the groups of other presets.
    select = Select(browser.find_element(By.CSS_SELECTOR, "select[data-filter=preset]"))
    for option in [o.get_attribute("value") for o in select.options if o.get_attribute("value")]:
        select.select_by_value(option)
        for article in browser.find_elements(By.CSS_SELECTOR, "article.group"):
            assert article.is_displayed() == (option in article.get_attribute("data-preset")
                                              .split())
    select.select_by_value("")
    assert all(a.is_displayed() for a in browser.find_elements(By.CSS_SELECTOR,
                                                                "article.group"))

    # A cell opens its runs: per seed the show picture, the grid, the curve, the command.
    cell = articles[0].find_element(By.CSS_SELECTOR, "table.board td.best button.open")
    cell.click()
    dialog = browser.find_element(By.ID, "detail")
    assert dialog.get_attribute("open") is not None
    cards = dialog.find_elements(By.CSS_SELECTOR, ".card")
    best = [r for r in groups[0].records
            if f"-{r.encoder}-z{r.z_dim}" in cell.get_attribute("data-cell")]
    assert len(cards) == len(best) >= 1
    assert not _broken_images(browser, "#detail")
    pictures = dialog.find_elements(By.CSS_SELECTOR, "img")
    wanted = sum(1 + bool((r.reconstruction or {}).get("grid")) for r in best)
    assert len(pictures) == wanted
    assert len(dialog.find_elements(By.CSS_SELECTOR, "svg.curve")) == \
        sum(len((r.training or {}).get("history") or []) > 1 for r in best)
    commands = [c.text for c in dialog.find_elements(By.CSS_SELECTOR, "pre code")]
    assert sorted(commands) == sorted(reproduce_command(r) for r in best)
    browser.execute_script("arguments[0].scrollIntoView()", pictures[0])
    browser.save_screenshot(str(tmp_path / "board-detail.png"))
    dialog.find_element(By.CSS_SELECTOR, "button.close").click()
    assert dialog.get_attribute("open") is None

    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(tmp_path / "board.png"))
    assert (tmp_path / "board.png").stat().st_size > 10_000


def test_the_page_fits_a_phone(board_page, browser, tmp_path):
    path, _ = board_page
    browser.set_window_size(390, 844)
    try:
        browser.get(path.as_uri())
        # Wide tables scroll inside their box; the page itself does not scroll sideways.
        assert browser.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1")
        browser.save_screenshot(str(tmp_path / "board-phone.png"))
    finally:
        browser.set_window_size(1280, 900)
