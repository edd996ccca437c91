"""The web app's weight and its time to first paint (a section of ``make bench``; alone: ``python benchmarks/web.py``).

1. bundle: the JavaScript the first screen loads (the entry script of ``web/dist/index.html`` and the chunks it
   preloads), gzipped as the gateway sends it (the build's ``.gz`` twins), against the budget of 300 KB; the CSS,
   and the chunks loaded later (API keys, usage, the code highlighter).
2. first paint: a gateway serving ``web/dist`` (started here on a free port; the first screen, the login page, needs
   no other service), loaded by Debian's Chromium (headless, through Playwright) in a fresh context each time: the
   browser's own Paint Timing entries (``first-paint``, ``first-contentful-paint``) and the time until the login form
   is on screen, median and worst of ``--runs`` cold loads (empty cache) and warm loads (cached assets). Loopback:
   no network latency, so this is the cost of the page itself (parse, compile, render).

Prints a table; ``--json PATH`` writes the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DIST = REPO / "web" / "dist"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-default-apps", "--disable-extensions",
]
BUDGET_KB = 300.0


def gz_size(path: Path) -> int:
    twin = path.with_name(path.name + ".gz")
    return twin.stat().st_size if twin.is_file() else len(gzip.compress(path.read_bytes(), 9))


def first_screen_files(dist: Path) -> tuple[list[Path], list[Path]]:
    """The scripts (entry + modulepreloads, in index.html) and stylesheets the first screen loads."""
    html = (dist / "index.html").read_text()
    scripts = re.findall(r'<script[^>]*type="module"[^>]*src="/([^"]+)"', html)
    scripts += re.findall(r'<link[^>]*rel="modulepreload"[^>]*href="/([^"]+)"', html)
    classic = re.findall(r'<script(?![^>]*type="module")[^>]*src="/([^"]+)"', html)
    styles = re.findall(r'<link[^>]*rel="stylesheet"[^>]*href="/([^"]+)"', html)
    return [dist / s for s in dict.fromkeys(scripts + classic)], [dist / s for s in styles]


def bundle(dist: Path) -> dict:
    scripts, styles = first_screen_files(dist)
    first = {p.name: gz_size(p) for p in scripts}
    later = {p.name: gz_size(p) for p in sorted((dist / "assets").glob("*.js")) if p not in scripts}
    js_kb = sum(first.values()) / 1024
    return {
        "first_screen_js_gzip_kb": round(js_kb, 1),
        "first_screen_js_raw_kb": round(sum(p.stat().st_size for p in scripts) / 1024, 1),
        "budget_kb": BUDGET_KB,
        "within_budget": js_kb < BUDGET_KB,
        "first_screen_css_gzip_kb": round(sum(gz_size(p) for p in styles) / 1024, 1),
        "first_screen_files": {k: round(v / 1024, 1) for k, v in first.items()},
        "later_chunks_gzip_kb": {k: round(v / 1024, 1) for k, v in later.items()},
    }


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_gateway(port: int, data_dir: str) -> subprocess.Popen:
    unused = free_port()  # no backend is needed for the static files; calls to one would fail fast
    env = {
        **os.environ,
        "CHATPLANE_DATA_DIR": data_dir,
        "CHATPLANE_GATEWAY_PORT": str(port),
        "CHATPLANE_GATEWAY_WEB_DIR": str(DIST),
        "CHATPLANE_GATEWAY_ACCESS_LOG": "false",
        "CHATPLANE_KAFKA_BOOTSTRAP_SERVERS": "",
        "CHATPLANE_GATEWAY_AUTH_TARGET": f"127.0.0.1:{unused}",
        "CHATPLANE_GATEWAY_CONVERSATION_TARGET": f"127.0.0.1:{unused}",
        "CHATPLANE_INFERENCE_POOLS": f"127.0.0.1:{unused}",
    }
    proc = subprocess.Popen([sys.executable, "-m", "chatplane.gateway"], env=env, stdout=subprocess.DEVNULL,  # noqa: S603
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):  # noqa: S310 - loopback
                return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("the gateway exited at start") from None
            time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("the gateway did not start in 60 s")


PAINT_JS = """async () => {
    const form = document.querySelector('form');
    const paints = Object.fromEntries(performance.getEntriesByType('paint').map(e => [e.name, e.startTime]));
    const nav = performance.getEntriesByType('navigation')[0];
    return {paints, domContentLoaded: nav ? nav.domContentLoadedEventEnd : null, form: !!form,
            transferred: performance.getEntriesByType('resource').reduce((n, r) => n + (r.transferSize || 0), 0)
                         + (nav ? nav.transferSize : 0)};
}"""


async def paint_times(base_url: str, runs: int) -> dict:
    from playwright.async_api import async_playwright

    samples: dict[str, list[float]] = {}

    def add(name: str, value: float | None) -> None:
        if value is not None:
            samples.setdefault(name, []).append(value)

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            for _ in range(runs):
                context = await browser.new_context(viewport={"width": 1280, "height": 800})
                page = await context.new_page()
                for kind in ("cold", "warm"):  # the second load of the same context finds the assets cached
                    started = time.perf_counter()
                    await page.goto(f"{base_url}/", wait_until="load")
                    await page.get_by_role("button", name="Log in").wait_for()
                    ready_ms = (time.perf_counter() - started) * 1000
                    await page.wait_for_timeout(50)  # paint entries are reported after the frame
                    found = await page.evaluate(PAINT_JS)
                    add(f"{kind}_first_paint_ms", found["paints"].get("first-paint"))
                    add(f"{kind}_first_contentful_paint_ms", found["paints"].get("first-contentful-paint"))
                    add(f"{kind}_login_form_ms", ready_ms)
                    add(f"{kind}_transferred_kb", found["transferred"] / 1024)
                await context.close()
        finally:
            await browser.close()
    return {name: {"median": round(statistics.median(v), 1), "max": round(max(v), 1), "runs": len(v)}
            for name, v in samples.items()}


def measure(runs: int) -> dict:
    if not (DIST / "index.html").is_file():
        raise SystemExit("web/dist is not built: run `make web`")
    report: dict = {"bundle": bundle(DIST)}
    if not os.access(CHROMIUM, os.X_OK):
        report["paint"] = {"skipped": f"{CHROMIUM} is missing (scripts/install_chromium.sh)"}
        return report
    port = free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        gateway = start_gateway(port, data_dir)
        try:
            report["paint"] = asyncio.run(paint_times(f"http://127.0.0.1:{port}", runs))
        finally:
            gateway.terminate()
            try:
                gateway.wait(15)
            except subprocess.TimeoutExpired:
                gateway.kill()
    return report


def print_table(report: dict) -> None:
    b = report["bundle"]
    verdict = "within" if b["within_budget"] else "OVER"
    print(f"\nweb app: first screen {b['first_screen_js_gzip_kb']} KB of gzipped JavaScript "
          f"({b['first_screen_js_raw_kb']} KB raw; {verdict} the {b['budget_kb']:.0f} KB budget), "
          f"{b['first_screen_css_gzip_kb']} KB of gzipped CSS; loaded later: "
          + ", ".join(f"{k} {v} KB" for k, v in b["later_chunks_gzip_kb"].items()))
    paint = report.get("paint") or {}
    if "skipped" in paint or "error" in paint:
        print(f"  first paint: {paint.get('skipped') or paint.get('error')}")
        return
    for kind in ("cold", "warm"):
        fp = paint.get(f"{kind}_first_paint_ms", {})
        fcp = paint.get(f"{kind}_first_contentful_paint_ms", {})
        form = paint.get(f"{kind}_login_form_ms", {})
        kb = paint.get(f"{kind}_transferred_kb", {})
        print(f"  {kind} load ({fp.get('runs', 0)} runs, Chromium headless, loopback): first paint "
              f"{fp.get('median')} ms (max {fp.get('max')}), first contentful paint {fcp.get('median')} ms "
              f"(max {fcp.get('max')}), login form ready {form.get('median')} ms; {kb.get('median')} KB transferred")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report = measure(args.runs)
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
