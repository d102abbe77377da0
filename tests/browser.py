"""A headless Chromium for the console's browser tests (Debian's ``chromium`` + ``chromium-driver``,
driven by selenium). Skips, saying why, where either is missing (scripts/install-deps.sh installs them)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest

WIDE = (1280, 900)
NARROW = (390, 844)  # a phone


def _binaries() -> tuple[str, str]:
    chrome = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver") or "/usr/lib/chromium/chromedriver"
    if not chrome:
        pytest.skip("no chromium: run scripts/install-deps.sh (apt: chromium chromium-driver)")
    if not shutil.which(driver):
        pytest.skip("no chromedriver: run scripts/install-deps.sh (apt: chromium-driver)")
    return chrome, driver


def make_driver(size: tuple[int, int] = WIDE) -> Any:
    """A headless Chrome WebDriver: new headless mode, no sandbox (tests run as root), no network
    but loopback (the console needs none: everything is served by the daemon)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    chrome, driver = _binaries()
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={size[0]},{size[1]}", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-sync", "--metrics-recording-only"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(options=opts, service=Service(executable_path=driver))
    drv.set_window_size(*size)
    return drv


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chrome per test module (starting one costs about a second)."""
    drv = make_driver()
    yield drv
    drv.quit()


def js_errors(driver: Any) -> list[str]:
    """The page's console errors since the last call (a failing module import shows up here)."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def wait_until(driver: Any, predicate: Callable[[Any], Any], timeout: float = 30.0, what: str = "") -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(predicate)
    except Exception as e:
        logs = js_errors(driver)
        raise AssertionError(f"{what or 'condition'} not met within {timeout}s; page errors: {logs}") from e
