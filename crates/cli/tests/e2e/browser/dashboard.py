"""Drives Yun's dashboard in a real headless Chromium (Debian's) through Playwright and prints
what it saw as JSON, for the end-to-end test to check.

Usage: dashboard.py URL APP TRACE_ID [SCREENSHOT_DIR]
  URL is what `yun dashboard` prints (with the token in the fragment).
"""
import json
import os
import sys

from playwright.sync_api import sync_playwright

url, app, trace_id = sys.argv[1:4]
shots = sys.argv[4] if len(sys.argv) > 4 else None
base = url.split("#")[0]
seen = {}


def wait_until(page, condition, seconds=15):
    # The page's policy forbids evaluating strings in it (so no wait_for_function); poll from
    # outside instead.
    for _ in range(seconds * 10):
        if page.evaluate("() => " + condition):
            return
        page.wait_for_timeout(100)
    raise TimeoutError(condition)


def shot(page, name):
    if shots:
        page.screenshot(path=os.path.join(shots, name + ".png"), full_page=True)


with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"), args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    # Without the token the page says how to sign in.
    page.goto(base)
    page.wait_for_selector(".error-box")
    seen["without_token"] = page.inner_text(".error-box")

    # With it: the applications, then the app's overview with the live topology.
    page.goto(url)
    page.wait_for_selector(f"#apps tr[data-href='#/app/{app}']")
    seen["apps"] = page.inner_text("#apps")
    shot(page, "apps")
    page.click(f"#apps tr[data-href='#/app/{app}']")
    page.wait_for_selector("#topology .edge-group[data-from='external'][data-to='front']", timeout=30000)
    page.wait_for_selector("#topology .edge-group[data-from='front'][data-to='back']", timeout=30000)
    # Read in one go: the view refreshes itself every few seconds.
    overview = page.evaluate(
        """() => ({
            edges: [...document.querySelectorAll('#topology .edge-group')].map(g =>
                ({from: g.dataset.from, to: g.dataset.to, label: g.textContent})),
            nodes: [...document.querySelectorAll('#topology .node')].map(n => n.dataset.name),
            slo: document.querySelector('#slo').innerText,
            instances: document.querySelector('#instances').innerText,
        })"""
    )
    seen.update(overview)
    shot(page, "overview")

    # Trace search, then the waterfall of one trace.
    page.click("a[data-tab='traces']")
    page.wait_for_selector("#traces tr.clickable")
    seen["trace_rows"] = len(page.query_selector_all("#traces tr.clickable"))
    shot(page, "traces")
    page.goto(f"{base}#/trace/{trace_id}/{app}")
    page.wait_for_selector("#waterfall .span")
    seen["waterfall"] = page.evaluate(
        """() => [...document.querySelectorAll('#waterfall .span')].map(g =>
            ({span: g.dataset.span, parent: g.dataset.parent, text: g.textContent}))"""
    )
    shot(page, "trace")

    # Logs filtered by text, and the jump from a line to its trace.
    page.goto(f"{base}#/app/{app}/logs")
    page.fill("#log-filters input[name=grep]", "order-paid")
    page.click("#log-filters button")
    wait_until(page, "document.querySelectorAll('#log-lines .log-line').length === 1")
    seen["log_lines"] = page.evaluate("() => [...document.querySelectorAll('#log-lines .log-line')].map(l => l.innerText)")
    shot(page, "logs")
    page.click("#log-lines .trace-link")
    page.wait_for_selector("#waterfall .span")
    seen["jumped_to"] = page.evaluate("location.hash")

    # History: a diff, then a rollback through the button (confirming the dialog).
    page.goto(f"{base}#/app/{app}/history")
    page.wait_for_selector("#revisions button[data-diff='1']")
    page.click("#revisions button[data-diff='1']")
    page.wait_for_selector("#diff .diff")
    seen["diff"] = page.inner_text("#diff .diff")
    shot(page, "history")
    page.once("dialog", lambda d: d.accept())
    page.click("#revisions button[data-rollback='1']")
    wait_until(page, "document.querySelectorAll('#revisions tr').length === 4")
    seen["revisions_after_rollback"] = page.inner_text("#revisions")

    seen["page_errors"] = errors
    browser.close()

print(json.dumps(seen))
