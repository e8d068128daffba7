"""Open a scorecli report in headless Chromium with networking off; check it and take a screenshot.

    python scripts/report_browser.py REPORT.html [--screenshot out.png] [--width 1100] [--height 1500]

Needs Debian's `chromium` and `chromium-driver` packages and the `selenium` Python package. Prints JSON:
JavaScript errors, the URLs of every network request the page made (none should leave file:, data: or
blob:), the size of each chart and heatmap, and what the tooltip shows on hovering the first token.
The tests (tests/test_report_browser.py) use `open_report` and `inspect_report` from here.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:", "chrome-extension:")


def chromium_paths() -> tuple[str, str] | None:
    """The Chromium binary and its driver, or None where they are not installed."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def open_report(path: Path, width: int = 1100, height: int = 1500):
    """A headless Chromium showing the report, offline, logging the console and every network request."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--window-size={width},{height}",
        # no network: every host resolves nowhere and every proxy connection fails
        "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
    ):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    chrome.execute_cdp_cmd("Network.enable", {})
    chrome.execute_cdp_cmd(
        "Network.emulateNetworkConditions",
        {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
    )
    chrome.get(Path(path).resolve().as_uri())
    return chrome


def inspect_report(chrome) -> dict:
    """JavaScript errors, network requests, chart and heatmap sizes, and the tooltip of a hovered token."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    sizes = chrome.execute_script(
        """return Array.from(document.querySelectorAll('.chart .js-plotly-plot, .tokens')).map(function (e) {
             var r = e.getBoundingClientRect();
             return {kind: e.classList.contains('tokens') ? 'heatmap' : 'chart', id: e.id,
                     width: r.width, height: r.height, svg: e.querySelectorAll('svg').length,
                     tokens: e.querySelectorAll('.tok').length};
           });"""
    )
    token = chrome.find_elements(By.CSS_SELECTOR, ".tokens .tok")
    tooltip, token_text, background = "", "", ""
    if token:
        chrome.execute_script("arguments[0].scrollIntoView({block: 'center'});", token[0])
        ActionChains(chrome).move_to_element(token[0]).perform()
        tooltip = chrome.find_element(By.ID, "tip").text
        token_text = token[0].text
        background = token[0].value_of_css_property("background-color")
    logs = chrome.get_log("browser")
    requests = []
    for entry in chrome.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            requests.append(message["params"]["request"]["url"])
    return {
        "errors": [e["message"] for e in logs if e["level"] == "SEVERE"],
        "requests": requests,
        "remote_requests": [u for u in requests if not u.startswith(LOCAL_SCHEMES)],
        "elements": sizes,
        "hover": {"token": token_text, "tooltip": tooltip, "background": background},
    }


def _frame(chrome, selector: str | None) -> None:
    """Scroll to the top of the page, or to `selector` with the pointer on its first token."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    if not selector:
        chrome.execute_script("window.scrollTo(0, 0);")
        return
    target = chrome.find_element(By.CSS_SELECTOR, selector)
    chrome.execute_script("arguments[0].scrollIntoView({block: 'start'});", target)
    tokens = target.find_elements(By.CSS_SELECTOR, ".tok")
    if tokens:
        ActionChains(chrome).move_to_element(tokens[min(3, len(tokens) - 1)]).perform()


def main() -> None:
    """Check a report in the browser and print what was found."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--screenshot", type=Path)
    parser.add_argument("--width", type=int, default=1100)
    parser.add_argument("--height", type=int, default=1500)
    parser.add_argument("--at", help="CSS selector to scroll to (and hover its first token) before the screenshot")
    args = parser.parse_args()
    if chromium_paths() is None:
        sys.exit("needs chromium and chromedriver (apt-get install chromium chromium-driver)")
    chrome = open_report(args.report, args.width, args.height)
    try:
        result = inspect_report(chrome)
        if args.screenshot:
            _frame(chrome, args.at)
            chrome.save_screenshot(str(args.screenshot))
    finally:
        chrome.quit()
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
