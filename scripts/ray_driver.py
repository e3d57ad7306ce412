"""What the driver of a `--backend ray` directory run costs: its peak RSS, and the time it
spends committing each part (recording it in the manifest, then publishing it).

    PYTHONPATH=. python scripts/ray_driver.py --documents 500 --payload 8000 --part-size 100

makes DOCUMENTS short documents, each with an input field of PAYLOAD characters (the
documents layout writes it back, so the output grows without more tagging), annotates them
into a local folder with one Ray actor on the CPU, and prints one JSON line. Run it with 10x
the documents to see whether the driver's memory follows the output; run it with the
PYTHONPATH of another checkout to compare that checkout's driver.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

SENTENCES = [
    "Angela Merkel met Emmanuel Macron in Paris.",
    "The United Nations opened an office in Nairobi.",
    "Siemens hired engineers from Munich and Berlin.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=500)
    parser.add_argument("--payload", type=int, default=8000, help="characters of input field")
    parser.add_argument("--part-size", type=int, default=100)
    parser.add_argument("--output", help="the output directory (default: a temporary one)")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="ray-driver-"))
    docs = folder / "docs.jsonl"
    with docs.open("w", encoding="utf-8") as handle:
        for i in range(args.documents):
            text = SENTENCES[i % len(SENTENCES)]
            handle.write(json.dumps({"id": f"d{i}", "text": text, "payload": "x" * args.payload}))
            handle.write("\n")
    output = args.output or f"{folder / 'out'}/"

    from annotator.runs import directory
    from annotator.runs.dispatch import annotate_run
    from annotator.runs.request import AnnotateOptions, AnnotateRequest

    commits: list[float] = []
    timed = "commit" if hasattr(directory.Manifest, "commit") else "save"
    real = getattr(directory.Manifest, timed)

    def measured(self, *call_args, **kwargs):
        started = time.perf_counter()
        try:
            return real(self, *call_args, **kwargs)
        finally:
            commits.append(time.perf_counter() - started)

    setattr(directory.Manifest, timed, measured)
    actor_seconds: list[float] = []
    if hasattr(directory.Manifest, "commit"):  # actors that write: their time on each part
        from annotator.runs import ray as ray_runs

        real_parts = ray_runs.RaySource.parts

        def parts(self, *call_args):
            for part in real_parts(self, *call_args):
                actor_seconds.append(part["seconds"])
                yield part

        ray_runs.RaySource.parts = parts
    options = AnnotateOptions(
        device="cpu", output_format="jsonl", layout="documents", progress=False
    )
    request = AnnotateRequest.build(
        [str(docs)], output, options, part_size=args.part_size, workers=1, backend="ray"
    )
    started = time.perf_counter()
    summary = annotate_run(request)
    seconds = time.perf_counter() - started
    parts = list(Path(output).glob("part-*")) if not output.startswith("s3://") else []
    print(
        json.dumps(
            {
                "documents": summary.documents,
                "words": summary.words,
                "output_mb": round(sum(p.stat().st_size for p in parts) / 2**20, 1),
                "parts": len(commits) - (1 if timed == "commit" else 2),
                "driver_peak_rss_mb": round(
                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                ),
                f"manifest_{timed}_ms_mean": round(1000 * sum(commits) / max(1, len(commits)), 2),
                "actor_words_per_s": round(summary.words / sum(actor_seconds))
                if actor_seconds
                else None,
                "seconds": round(seconds, 1),
            }
        )
    )
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
