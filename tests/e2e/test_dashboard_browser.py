"""Dashboards in a real browser (Debian's headless Chromium through chromedriver), through
the local stack's HAProxy, against a real cluster started by the stock client:

- the owner sees the live Bokeh dashboard (its websocket connects and data keeps coming);
- another user gets 404, a visitor without credentials 401 (a Basic challenge);
- a script running in the dashboard's page (the tenant's page, same origin as the API)
  cannot use the visitor's session or cached credentials against the API.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from dask_gateway.client import ClusterStatus

from gatewayha import dashboards

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def _browser_installed():
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail("Chromium is not installed: run scripts/bootstrap-browser.sh (make test does)")


@contextmanager
def chromium() -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="gwha-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
            options.add_argument(arg)
        options.add_argument(f"--user-data-dir={profile}")
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        driver.set_page_load_timeout(30)
        driver.set_script_timeout(30)
        try:
            yield driver
        finally:
            driver.quit()


class Network:
    """What the browser's DevTools saw: document answers and websocket traffic."""

    def __init__(self) -> None:
        self.responses: list[tuple[str, int, str]] = []  # (url, status, resource type)
        self.ws_handshakes: list[tuple[str, int]] = []
        self.ws_frames_received = 0
        self._ws_urls: dict[str, str] = {}

    def read(self, driver) -> Network:
        for entry in driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            method, params = message["method"], message.get("params", {})
            if method == "Network.responseReceived":
                response = params["response"]
                self.responses.append((response["url"], response["status"], params.get("type", "")))
            elif method == "Network.webSocketCreated":
                self._ws_urls[params["requestId"]] = params["url"]
            elif method == "Network.webSocketHandshakeResponseReceived":
                url = self._ws_urls.get(params["requestId"], "?")
                self.ws_handshakes.append((url, params["response"]["status"]))
            elif method == "Network.webSocketFrameReceived":
                self.ws_frames_received += 1
        return self

    def document_status(self, url: str) -> int | None:
        statuses = [s for u, s, t in self.responses if t == "Document" and u.split("@")[-1].endswith(url)]
        return statuses[-1] if statuses else None


def with_credentials(url: str, user: str, password: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{user}:{password}@{rest}"


def wait_for(driver, script: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for: {script}")


@pytest.fixture(scope="module")
def other_user(stack) -> tuple[str, str]:
    password = "other-user-password-123"
    subprocess.run(
        [str(ROOT / ".venv/bin/gatewayha-admin"), "--config", str(stack.state / "gatewayha.toml")]
        + ["users", "add", "mallory", "--password-stdin", "--update"],
        input=password + "\n",
        env=stack.env,
        check=True,
        capture_output=True,
        text=True,
    )
    return "mallory", password


@pytest.fixture
def cluster(gateway):
    cluster = gateway.new_cluster()
    try:
        yield cluster
    finally:
        cluster.shutdown()


PAGE_SCRIPT = """
const done = arguments[arguments.length - 1];
const name = arguments[0];
(async () => {
  const out = {cookie: document.cookie};
  const calls = [
    ["list", "/api/v1/clusters/", "GET"],
    ["get", `/api/v1/clusters/${name}`, "GET"],
    ["delete", `/api/v1/clusters/${name}`, "DELETE"],
  ];
  for (const [key, url, method] of calls) {
    try {
      const r = await fetch(url, {method, credentials: "include"});
      out[key] = [r.status, (await r.text()).slice(0, 300)];
    } catch (e) {
      out[key] = [0, String(e)];
    }
  }
  done(out);
})();
"""


def test_owner_sees_the_live_dashboard_and_its_page_cannot_use_the_visitors_session(stack, gateway, cluster):
    user, password = stack.credentials()
    name = cluster.name
    url = f"{stack.address}/clusters/{name}/status"
    assert cluster.dashboard_link == url

    with chromium() as driver:
        driver.get(with_credentials(url, user, password))  # as if typed into the login prompt
        wait_for(driver, "return window.Bokeh && Bokeh.documents.length > 0")
        # The login's redirect came back to the same page (Chromium shows the URL's userinfo).
        assert driver.current_url.split("@")[-1] == url.split("://")[1]
        Network().read(driver)  # drop the login's events
        driver.get(url)  # the link as the user has it; the token cookie now lets it through
        # The live Bokeh page: its document and plots, fed over its websocket.
        wait_for(driver, "return window.Bokeh && Bokeh.documents.length > 0 && Bokeh.documents[0].roots().length")
        time.sleep(2)
        net = Network().read(driver)
        assert net.document_status(f"/clusters/{name}/status") == 200, net.responses[:5]
        assert (f"ws://127.0.0.1:{stack.port}/clusters/{name}/status/ws", 101) in net.ws_handshakes, net.ws_handshakes
        frames = net.ws_frames_received
        assert frames > 0
        time.sleep(2)
        assert net.read(driver).ws_frames_received > frames, "the dashboard stopped updating"
        assert driver.current_url == url

        # A script in the dashboard's page (the tenant's code, same origin as the API). The
        # browser holds a session cookie and Basic credentials cached for the realm.
        cookies = {c["name"]: c for c in driver.execute_cdp_cmd("Network.getAllCookies", {})["cookies"]}
        token = cookies[dashboards.COOKIE]
        assert (token["httpOnly"], token["sameSite"], token["path"]) == (True, "Strict", f"/clusters/{name}/")
        session = cookies["gatewayha-session"]
        assert (session["httpOnly"], session["sameSite"], session["path"]) == (True, "Strict", "/api/")
        out = driver.execute_async_script(PAGE_SCRIPT, name)
        assert out["cookie"] == ""  # HttpOnly: nothing to read
        for key in ("list", "get", "delete"):
            status, body = out[key]
            assert status == 403, (key, status, body)
            assert "web page" in body
        assert gateway.get_cluster(name).status == ClusterStatus.RUNNING

        # Control: the same browser's own navigation (address bar) does use those
        # credentials, so the 403s above are the refusal of a page's calls, not a lack of them.
        driver.get(f"{stack.address}/api/v1/clusters/")
        assert name in json.loads(driver.find_element("tag name", "body").text)


def test_another_user_gets_404_and_no_credentials_get_a_401_challenge(stack, cluster, other_user):
    url = f"{stack.address}/clusters/{cluster.name}/status"

    with chromium() as driver:
        driver.get(with_credentials(url, *other_user))
        net = Network().read(driver)
        assert net.document_status(f"/clusters/{cluster.name}/status") == 404, net.responses[:5]
        assert "does not exist" in driver.find_element("tag name", "body").text
        assert not [c for c in driver.get_cookies() if c["name"] == dashboards.COOKIE]
        assert net.ws_handshakes == []

    with chromium() as driver:
        driver.get(url)
        net = Network().read(driver)
        assert net.document_status(f"/clusters/{cluster.name}/status") == 401, net.responses[:5]
        assert net.ws_handshakes == []
