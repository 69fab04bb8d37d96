"""The page, end to end in headless Chromium against the real stack (marked ``browser``).

A real broker and Redis, a ``streamrec consume`` process and a ``streamrec serve``
process; Debian's chromium and chromedriver, driven by Selenium. A person's
path: search a title, open its similar items, pick a user, click an item, and
see the session and the recommendations change. Screenshots go to the test's
directory, or to ``STREAMREC_SCREENSHOTS`` when set (the docs' own come from
the demo, through ``streamrec.local.screenshots``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from test_search import CATALOGUE
from test_serving_workers import api_process

from core.events import ClickEvent
from core.settings import KafkaSettings, RedisSettings
from offline.index import ItemIndex, publish
from producer.client import ClickProducer, ensure_topics
from streamrec.local.browser import chromedriver, chromium, headless_chromium
from streamrec.local.harness import Children, process_env
from streamrec.local.stack import free_port, wait_until

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        chromium() is None or chromedriver() is None,
        reason="no chromium/chromedriver (./run.sh test installs Debian's where it can)",
    ),
]

T0 = 1_600_000_000_000
GROUP = "browser"


@pytest.fixture
def live_api(live_stack: tuple[str, str]) -> str:
    return live_stack[0]


@pytest.fixture
def live_stack(
    redis_client: redis.Redis,
    redis_settings: RedisSettings,
    kafka_settings: KafkaSettings,
    tmp_path: Path,
) -> Iterator[tuple[str, str]]:
    """A consumer and the API over a small stream: people who watch Toy Story (1)
    go on to Toy Soldiers (5) and The American President (3). Yields the API's
    URL and the consumer's metrics URL."""
    ensure_topics(kafka_settings)
    clicks = []
    for u in range(30):
        for k, item in enumerate(["1", "5", "3"] if u % 3 else ["2", "6", "4"]):
            clicks.append(ClickEvent(f"viewer-{u}", item, T0 + u * 100_000 + k * 1000))
    with ClickProducer(kafka_settings) as producer:
        for e in clicks:
            producer.send(e)
        producer.flush()
    ids = list(CATALOGUE)
    vectors = np.random.default_rng(3).normal(size=(len(ids), 8)).astype(np.float32)
    publish(ItemIndex.from_vectors(ids, vectors, titles=CATALOGUE), tmp_path / "artifacts")
    children = Children(tmp_path / "logs")
    metrics_port = free_port()
    children.start(
        "consumer",
        [sys.executable, "-m", "streamrec.cli", "consume", "--group", GROUP],
        {
            **process_env(kafka_settings, redis_settings),
            "STREAMREC_CONSUMER_METRICS_PORT": str(metrics_port),
        },
    )
    stats = redis_settings.keys.stats

    def applied() -> bool:
        children.check()
        return int(redis_client.hget(stats, "events") or 0) >= len(clicks)

    try:
        wait_until(applied, 60, "the consumer to apply the stream")
        env = {
            "STREAMREC_KAFKA_BOOTSTRAP": kafka_settings.bootstrap,
            "STREAMREC_KAFKA_TOPIC": kafka_settings.topic,
            "STREAMREC_SERVING_CONSUMER_GROUP": GROUP,
        }
        with api_process(
            redis_settings, tmp_path / "artifacts", tmp_path / "api.log", env=env
        ) as url:
            yield url, f"http://127.0.0.1:{metrics_port}/metrics"
    finally:
        children.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    driver = headless_chromium(tmp_path / "chromium")
    try:
        yield driver
    finally:
        driver.quit()


def shots(tmp_path: Path) -> Path:
    out = Path(os.environ.get("STREAMREC_SCREENSHOTS") or tmp_path / "screenshots")
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_search_click_and_the_recommendations_change(
    live_api: str, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 20)

    def texts(css: str) -> list[str]:
        return [e.text for e in browser.find_elements(By.CSS_SELECTOR, css)]

    browser.get(f"{live_api}/?user=visitor-browser")
    out = shots(tmp_path)
    # The live panel reads the consumer's progress.
    wait.until(lambda d: d.find_element(By.ID, "live-applied").text == "90")
    # A new visitor: trending only.
    wait.until(lambda d: "trending" in d.find_element(By.ID, "fallback").text)
    before = texts("#recs li .title")
    assert before and all("trending" in w for w in texts("#recs li .why"))

    # Search, case and accents ignored; open the item's similar items.
    box = browser.find_element(By.ID, "q")
    box.send_keys("TOY st")
    wait.until(lambda d: texts("#results li .title") == ["Toy Story (1995)"])
    browser.find_element(By.CSS_SELECTOR, "#results li .title").click()
    wait.until(lambda d: d.find_element(By.ID, "similar-box").is_displayed())
    similar = texts("#similar li .title")
    assert "Toy Soldiers (1991)" in similar
    assert "clicked together" in texts("#similar li .why")[similar.index("Toy Soldiers (1991)")]
    browser.save_screenshot(str(out / "search-and-similar.png"))

    # Click Toy Story as this visitor: the session shows it, the list changes.
    browser.find_element(By.CSS_SELECTOR, '#results li[data-item="1"] button.click').click()
    wait.until(lambda d: "in the recommendations after" in d.find_element(By.ID, "status").text)
    assert texts("#session li .title")[0] == "Toy Story (1995)"
    assert browser.find_element(By.ID, "fallback").text == ""
    after = texts("#recs li .title")
    assert after != before
    reasons = dict(zip(after, texts("#recs li .why"), strict=True))
    assert reasons["Toy Soldiers (1991)"] == "clicked with Toy Story (1995)"
    assert browser.find_elements(By.CSS_SELECTOR, "#recs li.new")  # what changed is marked
    browser.save_screenshot(str(out / "after-a-click.png"))
