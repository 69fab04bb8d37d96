"""Screenshots of the page for the docs, taken from a running API (the demo's).

    .venv/bin/streamrec demo --keep-serving &      # prints "try it: http://127.0.0.1:PORT/"
    .venv/bin/python -m streamrec.local.screenshots http://127.0.0.1:PORT docs/page \\
        --user 414 --query "toy story"

Searches the query, opens the first result's similar items, shows the user and
clicks the first similar item for them, saving one PNG after each step.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from streamrec.local.browser import headless_chromium


def take(api: str, out: Path, user: str, query: str) -> list[Path]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    out.mkdir(parents=True, exist_ok=True)
    shots = []
    with tempfile.TemporaryDirectory() as profile:
        driver = headless_chromium(Path(profile), 1280, 1000)
        try:
            wait = WebDriverWait(driver, 20)
            driver.get(f"{api}/?user={user}")
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#recs li"))
            wait.until(lambda d: d.find_element(By.ID, "live-applied").text != "–")
            driver.find_element(By.ID, "q").send_keys(query)
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results li .title"))
            driver.find_element(By.CSS_SELECTOR, "#results li .title").click()
            wait.until(lambda d: d.find_element(By.ID, "similar-box").is_displayed())
            shots.append(out / "page-search-similar.png")
            driver.save_screenshot(str(shots[-1]))
            driver.find_element(By.CSS_SELECTOR, "#similar li button.click").click()
            wait.until(lambda d: "in the recommendations" in d.find_element(By.ID, "status").text)
            shots.append(out / "page-after-a-click.png")
            driver.save_screenshot(str(shots[-1]))
        finally:
            driver.quit()
    return shots


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("api", help="the API's base URL")
    p.add_argument("out", type=Path)
    p.add_argument("--user", default="414")
    p.add_argument("--query", default="toy story")
    args = p.parse_args()
    for path in take(args.api.rstrip("/"), args.out, args.user, args.query):
        print(path)


if __name__ == "__main__":
    main()
