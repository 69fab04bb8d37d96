"""Headless Chromium for the page's tests and screenshots: Debian's chromium and
chromedriver, driven by Selenium (no browser download: this machine's network is
closed to one, and the flags keep Chromium from calling home at all)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def chromedriver() -> str | None:
    return shutil.which("chromedriver")


def headless_chromium(profile: Path, width: int = 1280, height: int = 900) -> Any:
    """A Selenium driver for a fresh headless Chromium with its profile in ``profile``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = chromium(), chromedriver()
    if browser is None or driver is None:
        raise RuntimeError(
            "chromium and chromedriver are needed: apt-get install chromium chromium-driver"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in [*FLAGS, f"--window-size={width},{height}", f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    out = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    out.set_page_load_timeout(30)
    return out
