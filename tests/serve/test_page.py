"""The web page in a real browser against a real server: `genrec serve` on a tiny trained run, driven in headless
Chromium (Debian's chromium and chromium-driver, through selenium) as a person would use it: search titles, add
items to the history, ask for recommendations, read what the page shows; a screenshot is saved. Then SIGTERM:
the service shuts down cleanly."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(query_run, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "genrec.cli", "serve", str(query_run[0]), "--port", str(port),
                                 "--threads", "1"], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "/health", timeout=1)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"genrec serve exited: {log.read_text()[-2000:]}")
            time.sleep(0.1)
    yield url, proc, log
    if proc.poll() is None:
        proc.kill()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None or DRIVER is None:
        if os.environ.get("CI"):
            pytest.fail("chromium and chromedriver are needed (apt-get install chromium chromium-driver)")
        pytest.skip("chromium / chromedriver not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def test_the_page_searches_builds_a_history_and_recommends(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    url, _, _ = server
    wait = WebDriverWait(browser, 20)
    browser.get(url + "/")
    wait.until(lambda d: "items" in d.find_element(By.ID, "model").text)
    assert "64 items" in browser.find_element(By.ID, "model").text
    methods = [o.text for o in browser.find_elements(By.CSS_SELECTOR, "#method option")]
    assert methods[:3] == ["hybrid", "generative", "exact"] and "dense" in methods  # the default first
    # search titles and add two items to the history
    browser.find_element(By.ID, "search").send_keys("lipstick")
    browser.find_element(By.ID, "search-button").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#search-results button.add")) >= 2)
    results = browser.find_elements(By.CSS_SELECTOR, "#search-results li")
    assert all("lipstick" in li.text.lower() for li in results)
    for button in browser.find_elements(By.CSS_SELECTOR, "#search-results button.add")[:2]:
        button.click()
    history = browser.find_elements(By.CSS_SELECTOR, "#history li")
    assert len(history) == 2 and all("lipstick" in li.text.lower() for li in history)
    added = [li.find_element(By.CSS_SELECTOR, ".id").text for li in history]
    # ask for 8 recommendations
    k = browser.find_element(By.ID, "k")
    k.clear()
    k.send_keys("8")
    browser.find_element(By.ID, "recommend").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results tr")) == 8)
    rows = browser.find_elements(By.CSS_SELECTOR, "#results tr")
    assert [r.find_elements(By.TAG_NAME, "td")[0].text for r in rows] == [str(i) for i in range(1, 9)]
    shown = [r.find_element(By.CSS_SELECTOR, ".id").text for r in rows]
    assert not set(shown) & set(added)  # history items are left out by default
    body = urllib.request.Request(url + "/recommend", data=(
        '{"history": %s, "k": 8}' % str(added).replace("'", '"')).encode(), headers={"Content-Type": "application/json"})
    import json

    want = [i["item_id"] for i in json.loads(urllib.request.urlopen(body).read())["items"]]
    assert shown == want  # the page shows what the API answers
    scores = [float(r.find_elements(By.TAG_NAME, "td")[2].text) for r in rows]
    assert scores == sorted(scores, reverse=True)
    # a random user replaces the history; a bad k shows the service's message, not a broken page
    browser.find_element(By.ID, "random-user").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "user"), "user "))
    k.clear()
    k.send_keys("5000")
    browser.find_element(By.ID, "recommend").click()
    wait.until(lambda d: d.find_element(By.ID, "error").text)
    assert "1000" in browser.find_element(By.ID, "error").text
    shot = Path(os.environ.get("GENREC_SCREENSHOTS", tmp_path)) / "page.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    k.clear()
    k.send_keys("10")
    browser.find_element(By.ID, "recommend").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results tr")) == 10)
    # each recommended item says what its semantic-ID prefix stands for
    assert all(r.find_element(By.CSS_SELECTOR, ".about").text for r in browser.find_elements(By.CSS_SELECTOR, "#results tr"))
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    # a natural-language query through the query box, plain then personalised with the history
    browser.find_element(By.ID, "query").send_keys("red lipstick")
    browser.find_element(By.ID, "ask").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "caption"), "search: red lipstick"))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results tr")) == 10)
    found = [r.find_element(By.CSS_SELECTOR, ".id").text for r in browser.find_elements(By.CSS_SELECTOR, "#results tr")]
    req = urllib.request.Request(url + "/search", data=b'{"query": "red lipstick", "k": 10}',
                                 headers={"Content-Type": "application/json"})
    assert found == [i["item_id"] for i in json.loads(urllib.request.urlopen(req).read())["items"]]
    browser.find_element(By.ID, "personalise").click()
    browser.find_element(By.ID, "ask").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "caption"), "personalised search"))
    browser.find_element(By.ID, "query").clear()
    browser.find_element(By.ID, "ask").click()
    wait.until(lambda d: "query" in d.find_element(By.ID, "error").text)
    browser.save_screenshot(str(shot.with_name("search.png")))


def test_sigterm_shuts_the_service_down_cleanly(server):
    url, proc, log = server
    assert urllib.request.urlopen(url + "/health").status == 200
    proc.send_signal(signal.SIGTERM)
    # uvicorn answers what is in flight, runs the shutdown, then ends by the signal it caught, as a service should
    assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    text = log.read_text()
    assert "Shutting down" in text and "Application shutdown complete" in text and "Traceback" not in text
    # the startup line says what is served and how
    startup = r": \d+ items, methods hybrid, generative, .*(float32|bfloat16) on 1 thread\(s\), batches of up to 64 "
    assert re.search(startup, text)
