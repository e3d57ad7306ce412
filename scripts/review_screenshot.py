"""docs/review.png: the review page as `annotator review` serves it, photographed by headless
Chromium (`make screenshots` runs it).

    review_screenshot.py DOCS... --model default --out SAMPLE_DIR -o docs/review.png

The page is served in this process on a free port of 127.0.0.1, photographed once its script
has fetched the first sentence, and the server stopped.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tree's annotator, whatever the working directory


def main() -> None:
    from annotator.review.server import ReviewServer
    from annotator.review.session import open_session

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("docs", nargs="+")
    parser.add_argument("--model", default="default")
    parser.add_argument("--out", required=True, help="sample folder (best a fresh one)")
    parser.add_argument("-o", "--output", required=True, help="PNG to write")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium is not installed (make tools installs it)")
    session = open_session(args.docs, args.out, args.model, device="cpu", progress=False)
    server = ReviewServer(session, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run(
                [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
                + ["--disable-background-networking", "--disable-component-update"]
                + [f"--user-data-dir={profile}", "--window-size=1100,640"]
                + ["--virtual-time-budget=5000", f"--screenshot={Path(args.output).resolve()}"]
                + [server.url],
                check=True,
                stderr=subprocess.DEVNULL,
            )
    finally:
        server.shutdown()
        server.server_close()
        session.close()
    print(args.output, file=sys.stderr)


if __name__ == "__main__":
    main()
