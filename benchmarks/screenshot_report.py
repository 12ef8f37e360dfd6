"""Render a report.json to HTML and open it in a real headless browser (Debian's chromium).

    python benchmarks/screenshot_report.py REPORT.json [-o DIR] [--width 1400] [--height 1800]

writes DIR/report.html, DIR/report.png (a screenshot, for a person to look at) and
DIR/report.dom.html (the DOM after the browser parsed and laid out the page), and prints the
paths. tests/test_report_browser.py runs this and checks the table and plots made it into the DOM
and the screenshot is not blank. Needs `chromium` on PATH (apt-get install chromium).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Headless, offline, no profile state: nothing but the page. --no-sandbox because CI runs as root.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         "--disable-extensions", "--mute-audio"]


def find_browser():
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(browser, args, url, timeout):
    profile = tempfile.mkdtemp(prefix="optkit-chromium-")
    try:
        return subprocess.run([browser] + FLAGS + [f"--user-data-dir={profile}"] + args + [url],
                              capture_output=True, timeout=timeout)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def dump_dom(html_path, browser=None, timeout=90) -> str:
    """The page's DOM as serialized by the browser after loading it."""
    browser = browser or find_browser()
    proc = _run(browser, ["--dump-dom"], "file://" + os.path.abspath(html_path), timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium --dump-dom failed: {proc.stderr.decode(errors='replace')[-400:]}")
    return proc.stdout.decode("utf-8", errors="replace")


def screenshot(html_path, png_path, width=1400, height=1800, browser=None, timeout=90) -> str:
    browser = browser or find_browser()
    png_path = os.path.abspath(png_path)
    proc = _run(browser, [f"--screenshot={png_path}", f"--window-size={width},{height}"],
                "file://" + os.path.abspath(html_path), timeout)
    if proc.returncode != 0 or not os.path.exists(png_path):
        raise RuntimeError(f"chromium --screenshot failed: {proc.stderr.decode(errors='replace')[-400:]}")
    return png_path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report_json")
    p.add_argument("-o", "--out-dir", default=".")
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--height", type=int, default=1800)
    args = p.parse_args(argv)
    browser = find_browser()
    if not browser:
        sys.stderr.write("screenshot_report: no chromium on PATH (apt-get install chromium)\n")
        return 2
    from optkit import report

    doc = report.load(args.report_json)
    os.makedirs(args.out_dir, exist_ok=True)
    html_path = report.write_text(report.render(doc, "html"), os.path.join(args.out_dir, "report.html"))
    dom_path = report.write_text(dump_dom(html_path, browser), os.path.join(args.out_dir, "report.dom.html"))
    png_path = screenshot(html_path, os.path.join(args.out_dir, "report.png"), args.width, args.height, browser)
    print(json.dumps({"html": html_path, "dom": dom_path, "png": png_path, "browser": browser}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
