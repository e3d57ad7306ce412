"""How long the review takes to get going and to answer, on generated documents:

    review_timing.py --documents 10000 --model default

the model pass over the documents, then choosing the first sentences (the order of all of
them and the first three materialised), then decisions posted to the page's server one after
another as the page posts them (each answer carries the next sentences).
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tree's annotator, whatever the working directory


def main() -> None:
    from annotator.pipeline import Annotator
    from annotator.records import Document
    from annotator.review.sampling import run_model_pass
    from annotator.review.server import ReviewServer
    from annotator.review.session import ReviewSession
    from annotator.review.store import DecisionStore
    from tests.synthetic import sentences

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=10_000)
    parser.add_argument("--model", default="default")
    parser.add_argument("--decisions", type=int, default=50)
    args = parser.parse_args()
    rng = random.Random(0)
    pool = [" ".join(token for token, _ in s) for s in sentences(2000, seed=5)]
    documents = [
        Document(f"doc{i}", " ".join(rng.sample(pool, rng.randint(1, 4))), "generated", i)
        for i in range(args.documents)
    ]
    words = sum(len(d.text.split()) for d in documents)
    with Annotator(args.model, device="cpu") as annotator:
        began = time.perf_counter()
        model_pass, _ = run_model_pass(annotator, documents, "-")
        pass_seconds = time.perf_counter() - began
    with tempfile.TemporaryDirectory() as folder:
        began = time.perf_counter()
        session = ReviewSession(documents, model_pass, annotator.segmenter, DecisionStore(folder))
        first = session.next_items()
        choose_seconds = time.perf_counter() - began
        server = ReviewServer(session, 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        answers = []
        item = first[0]
        for _ in range(args.decisions):
            connection = http.client.HTTPConnection("127.0.0.1", server.port)
            body = json.dumps({"key": item.key, "action": "accept", "spans": []})
            headers = {
                "Host": f"127.0.0.1:{server.port}",
                "X-Review-Token": server.token,
                "Content-Type": "application/json",
            }
            began = time.perf_counter()
            connection.request("POST", "/api/decide", body, headers)
            reply = json.loads(connection.getresponse().read())
            answers.append(time.perf_counter() - began)
            connection.close()
            item = session.served[reply["items"][0]["key"]]
        server.shutdown()
        server.server_close()
        session.close()
    print(
        f"{args.documents:,} documents, {words:,} words, {len(session.order):,} sentences\n"
        f"model pass: {pass_seconds:.1f} s ({words / pass_seconds:,.0f} words/s)\n"
        f"choosing the first sentences after it: {choose_seconds:.2f} s\n"
        f"decisions answered (fsync included): median {statistics.median(answers) * 1000:.1f} "
        f"ms, slowest {max(answers) * 1000:.1f} ms of {len(answers)}"
    )


if __name__ == "__main__":
    main()
