"""Headless Chromium for the tests that open a page (the Snakemake report) in a real browser.

Selenium drives Debian's `chromium` through its `chromedriver` (packages chromium and
chromium-driver, which .ci/run installs as root): the driver is found on PATH, so Selenium
Manager downloads nothing. `missing()` says why no browser can run (the test then skips).
Console messages of every page visited are kept (`goog:loggingPrefs`) for `severe()`.
"""

import importlib.util
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
WAIT_S = 60  # 2 shared CI cores: the first page of a fresh Chromium can take a while


def _binary():
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


def missing():
    """None when a headless browser can run, else the reason (for pytest.skip)."""
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install -e '.[test]')"
    if _binary() is None:
        return f"no Chromium on PATH (looked for {', '.join(BROWSERS)}; Debian: apt-get install chromium)"
    if shutil.which("chromedriver") is None:
        return "no chromedriver on PATH (Debian: apt-get install chromium-driver)"
    return None


class Browser:
    """One headless Chromium; `downloads` is where a clicked download lands."""

    def __init__(self, driver, downloads):
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver = driver
        self.downloads = Path(downloads)
        self.wait = WebDriverWait(driver, WAIT_S)
        self.console = []  # (window url, entry) of every window visited, read by collect_console()

    def until(self, condition, what):
        """condition(driver)'s first truthy value within WAIT_S, else AssertionError(what + the console errors)."""
        from selenium.common.exceptions import TimeoutException

        try:
            return self.wait.until(condition)
        except TimeoutException:
            raise AssertionError(f"{what} (after {WAIT_S} s; console errors: {self.severe()})") from None

    def open(self, path):
        self.driver.get(Path(path).resolve().as_uri())

    def link(self, text):
        """The visible link whose text is exactly `text`, once it is there."""
        from selenium.webdriver.common.by import By

        xpath = f"//a[normalize-space(.)='{text}']"
        return self.until(lambda d: next((e for e in d.find_elements(By.XPATH, xpath) if e.is_displayed()), False),
                          f"no visible link {text!r}")

    def click(self, text):
        self.link(text).click()

    def menu(self):
        """Texts of the visible links of the side menu, the breadcrumbs left out."""
        return self.driver.execute_script(
            "return [...document.querySelectorAll('nav a')]"
            ".filter(a => !a.closest('ol') && a.offsetParent !== null)"
            ".map(a => a.textContent.trim()).filter(t => t);")

    def row(self, first_cell, timeout=0.1):
        """The table row whose first cell reads `first_cell` (the report renders only the current view), or None."""
        from selenium.webdriver.common.by import By

        xpath = f"//tr[td[1][normalize-space(.)='{first_cell}']]"
        end = time.monotonic() + timeout
        while True:
            rows = self.driver.find_elements(By.XPATH, xpath)
            if rows or time.monotonic() > end:
                return rows[0] if rows else None
            time.sleep(0.05)

    def report_row(self, category, result):
        """In a Snakemake report: Results, `category`, then each subcategory until the row of `result` shows."""
        from selenium.webdriver.common.by import By

        self.driver.find_element(By.XPATH, "//nav//ol/li[1]/a").click()  # the breadcrumbs' home
        self.click("Results")
        if category in self.menu():  # several categories: pick one
            self.click(category)
        subcategories = self.menu()
        row = self.row(result)  # a category without subcategories lists its results at once
        for i, subcategory in enumerate(subcategories):
            if row is not None:
                return row
            if i:
                self.click(category)  # the breadcrumb back to the subcategories
            self.click(subcategory)
            row = self.row(result)
        assert row is not None, f"no row {result!r} under Results > {category} > {subcategories}"
        return row

    def button(self, row, icon):
        """A row's action button by its icon: "eye" (view or download), "information-circle"."""
        from selenium.webdriver.common.by import By

        return row.find_element(By.CSS_SELECTOR, f"a[iconname='{icon}']")

    def show_inline(self, category, result):
        """Opens an HTML result in the report page (its row's eye button) and switches into its iframe.

        The report shows an HTML item in an <iframe> in place; the caller switches back with
        driver.switch_to.default_content(). Returns the iframe's src (a data URI without its data).
        """
        from selenium.webdriver.common.by import By

        name = result.rsplit("/", 1)[-1]

        def shows(src):  # a file of report.zip, or a data URI of report.html (data:...;filename=NAME;base64,...)
            return src.endswith("/" + name) or (src.startswith("data:") and f";filename={name};" in src[:500])

        self.button(self.report_row(category, result), "eye").click()
        frame = self.until(lambda d: next((f for f in d.find_elements(By.TAG_NAME, "iframe")
                                           if shows(f.get_attribute("src") or "") and f.is_displayed()), False),
                           f"{result} not shown inline (no iframe of {name} in the page)")
        src = frame.get_attribute("src")
        src = src if not src.startswith("data:") else src[:src.index(";base64,")] + ";base64,..."
        self.driver.switch_to.frame(frame)
        self.until(lambda d: d.execute_script("return document.readyState === 'complete' && !!document.body"),
                   f"the page of {result} did not load in its iframe")
        return src

    def text(self):
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.TAG_NAME, "body").text

    def downloaded(self, name):
        """Waits for the download `name` to finish; its path."""
        path = self.downloads / name
        self.until(lambda d: path.exists() and not (self.downloads / (name + ".crdownload")).exists(),
                   f"{name} was not downloaded into {self.downloads}")
        return path

    def new_window(self, before):
        """Switches to the window opened since `before` (a list of handles)."""
        self.until(lambda d: len(d.window_handles) > len(before), "no new window opened")
        self.collect_console()
        new = [h for h in self.driver.window_handles if h not in before][0]
        self.driver.switch_to.window(new)
        return new

    def collect_console(self):
        """Moves the current window's console messages into self.console."""
        url = self.driver.current_url
        self.console += [(url, entry) for entry in self.driver.get_log("browser")]

    def severe(self):
        """Console errors (level SEVERE: uncaught exceptions, failed loads, console.error) so far."""
        self.collect_console()
        return [f"{url}: {e['message']}" for url, e in self.console if e["level"] == "SEVERE"]

    def screenshot(self, path):
        self.driver.save_screenshot(str(path))


@contextmanager
def chrome(downloads, width=1280, height=800):
    """A headless Chromium (window width x height) whose downloads go to `downloads`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _binary()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--mute-audio", "--no-first-run"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=shutil.which("chromedriver")))
    try:
        driver.set_page_load_timeout(WAIT_S)
        yield Browser(driver, downloads)
    finally:
        driver.quit()
