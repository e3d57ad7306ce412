"""The measuring steps of `scripts/gpu-check.sh` that are not `annotator bench`, and
the summary that judges every figure against the goals.

    gpu_check.py epochs --corpus DIR --device cuda --out epochs.json    one epoch of each trainer
    gpu_check.py scaling --docs FILE --workers 1,4,16 --out scaling.json annotate words/s by workers
    gpu_check.py summary --work DIR --out results.json                   the table and the goals
    gpu_check.py steps --tsv steps.tsv NAME ARGS... --- NAME ARGS...     steps in one process

Each step writes JSON; the summary reads whatever the steps left (a step that failed or ran out
of time is reported as missing, not guessed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tree's annotator, whatever the working directory

# The goals, as data: (what, the measure it judges, comparison, target, unit).
GOALS = (
    (
        "annotate end to end vs Flair predict @32, same device",
        "annotate_vs_flair",
        ">=",
        100.0,
        "x",
    ),
    ("annotate end to end words/s", "annotate_words_per_second", ">=", 450_000.0, "words/s"),
    ("identical spans in every compared bench row", "identical_spans", "==", True, ""),
    ("50 epochs of the offline recipe (fast trainer)", "fast_50_epochs_seconds", "<=", 600.0, "s"),
    ("fast trainer vs Flair's ModelTrainer per epoch", "fast_vs_flair_epoch", ">=", 30.0, "x"),
    ("CPU: most workers vs 1 worker (16 on the device)", "workers_scaling", ">=", 10.0, "x"),
    ("the whole check", "check_seconds", "<=", 480.0, "s"),
)
EPOCHS = 50


def _write(path: str, data: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(data, indent=2), encoding="utf-8")


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# --- one epoch of each trainer ----------------------------------------------------------------


def epochs(args: argparse.Namespace) -> None:
    """Times one epoch of the offline recipe with the fast trainer (float32, and bfloat16 on a
    GPU) and with Flair's ModelTrainer loop, each part projected to the whole corpus."""
    from annotator.bench.training import epoch_times
    from annotator.corpus import load_corpus
    from annotator.training.config import resolve_config

    corpus = load_corpus(args.corpus, resolve_config("offline").column_format)
    train_total, dev_total = len(corpus.train), len(corpus.dev) if corpus.dev is not None else 0
    runs = [
        ("fast", False, args.max_sentences, None),
        ("flair", False, args.flair_sentences, args.flair_dev_sentences),
    ]
    if args.device.startswith("cuda"):
        runs.insert(1, ("fast", True, args.max_sentences, None))
    report: dict[str, Any] = {
        "corpus": str(args.corpus),
        "device": args.device,
        "epochs": EPOCHS,
        "train_sentences": train_total,
        "dev_sentences": dev_total,
        "runs": [],
    }
    for trainer, bf16, train_used, dev_used in runs:
        config = resolve_config(
            "offline", overrides={"device": args.device, "mixed_precision": bf16}
        )
        started = time.perf_counter()
        train_seconds, dev_seconds = epoch_times(args.corpus, config, trainer, train_used, dev_used)
        train_used = min(train_used or train_total, train_total)
        dev_used = min(dev_total if dev_used is None else dev_used, dev_total)
        epoch = train_seconds * train_total / train_used + (
            dev_seconds * dev_total / dev_used if dev_used else 0.0
        )
        run = {
            "trainer": trainer,
            "bf16": bf16,
            "train_sentences": train_used,
            "dev_sentences": dev_used,
            "train_seconds": train_seconds,
            "dev_seconds": dev_seconds,
            "epoch_seconds": epoch,
            "projected_seconds": EPOCHS * epoch,
            "setup_seconds": time.perf_counter() - started - train_seconds - dev_seconds,
        }
        report["runs"].append(run)
        print(
            f"epochs: {trainer}{' bf16' if bf16 else ''}: {train_seconds:.1f} s for {train_used} "
            f"training sentences + {dev_seconds:.1f} s for {dev_used} dev sentences -> "
            f"{epoch:.1f} s an epoch, {EPOCHS * epoch / 60:.1f} min for {EPOCHS}",
            flush=True,
        )
        _write(args.out, report)  # what is done survives a timeout of the rest


# --- CPU scaling ------------------------------------------------------------------------------


def scaling(args: argparse.Namespace) -> None:
    """`annotate --workers N` words/s for each N, on documents sized to N (so that every worker has
    the same work), each worker with cores/N torch threads and its own splitter process; as with
    `annotate`, one worker is a run in this process (timed without loading the model)."""
    from annotator.runs.dispatch import annotate_run
    from annotator.runs.request import AnnotateOptions, AnnotateRequest

    texts = [
        json.loads(line)["text"]
        for line in Path(args.docs).read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    if not texts:
        raise SystemExit(f"gpu_check scaling: no documents in {args.docs}")
    report: dict[str, Any] = {"device": args.device, "cpu_count": os.cpu_count(), "runs": []}
    options = AnnotateOptions(device=args.device, progress=False)
    with tempfile.TemporaryDirectory(prefix="gpu-check-scaling-") as scratch:
        for workers in (int(w) for w in args.workers.split(",")):
            docs = Path(scratch) / f"docs-{workers}.jsonl"
            _write_cycled(docs, texts, args.words_per_worker * workers)
            started = time.perf_counter()
            output = f"{Path(scratch) / f'out-{workers}'}/"
            request = AnnotateRequest.build([str(docs)], output, options, workers=workers)
            summary = annotate_run(request)
            wall = time.perf_counter() - started
            work = summary.work_seconds if summary.work_seconds is not None else summary.seconds
            run = {
                "workers": workers,
                "words": summary.words,
                "documents": summary.documents,
                "work_seconds": work,
                "wall_seconds": wall,
                "words_per_second": summary.words / work,
                "words_per_second_with_starts": summary.words / wall,
            }
            report["runs"].append(run)
            print(
                f"scaling: {workers} worker(s): {run['words_per_second']:,.0f} words/s "
                f"({summary.words:,} words in {work:.1f} s; "
                f"{run['words_per_second_with_starts']:,.0f} with process starts)",
                flush=True,
            )
            _write(args.out, report)
            shutil.rmtree(Path(scratch) / f"out-{workers}")


def _write_cycled(path: Path, texts: list[str], words: int) -> None:
    """JSONL documents taken round the texts until about `words` whitespace-separated words."""
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for index in range(sys.maxsize):
            if count >= words:
                break
            text = texts[index % len(texts)]
            handle.write(json.dumps({"id": str(index), "text": text}) + "\n")
            count += len(text.split())


# --- the summary ------------------------------------------------------------------------------


def _pytest_counts(path: Path) -> dict[str, int] | None:
    try:
        suite = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def _bench_rows(bench: dict[str, Any] | None, section: str = "model") -> dict[str, dict[str, Any]]:
    """The rows of one bench section: the model's, or the tutorial stand-in's."""
    for found in (bench or {}).get("sections") or []:
        if found["name"] == section:
            return {row["key"]: row for row in found["rows"]}
    return {}


def measures(
    rows: dict[str, dict[str, Any]],
    training: dict[str, Any] | None,
    scale: dict[str, Any] | None,
    check_seconds: float,
) -> dict[str, Any]:
    """The figures the goals judge (None where a step left none)."""
    flair = rows.get("2@32", {}).get("words_per_second")
    # with parallel splitting (3w) where the bench ran it
    annotate = rows.get("3w", {}).get("words_per_second") or rows.get("3", {}).get(
        "words_per_second"
    )
    # bf16 rows round (their spans may move): only float32 rows must be identical
    compared = [
        row["identical"]
        for row in rows.values()
        if row.get("identical") is not None and "@" not in row["key"].removeprefix("2@")
    ]
    runs = {(r["trainer"], r["bf16"]): r for r in (training or {}).get("runs", [])}
    fast, slow = runs.get(("fast", False)), runs.get(("flair", False))
    workers = sorted((scale or {}).get("runs", []), key=lambda r: r["workers"])
    return {
        "annotate_vs_flair": annotate / flair if annotate and flair else None,
        "annotate_words_per_second": annotate,
        "identical_spans": all(compared) if compared else None,
        "fast_50_epochs_seconds": fast["projected_seconds"] if fast else None,
        "fast_vs_flair_epoch": slow["epoch_seconds"] / fast["epoch_seconds"]
        if fast and slow
        else None,
        "workers_scaling": (
            workers[-1]["words_per_second"] / workers[0]["words_per_second"]
            if len(workers) > 1 and workers[0]["workers"] == 1
            else None
        ),
        "check_seconds": check_seconds,
    }


def judge(values: dict[str, Any]) -> list[dict[str, Any]]:
    judged = []
    for name, key, comparison, target, unit in GOALS:
        value = values.get(key)
        met = None
        if value is not None:
            met = {">=": value >= target, "<=": value <= target, "==": value == target}[comparison]
        judged.append(
            {
                "goal": name,
                "measure": key,
                "comparison": comparison,
                "target": target,
                "unit": unit,
                "value": value,
                "met": met,
            }
        )
    return judged


def _number(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if unit == "x":
        return f"{value:,.1f}x"
    return (
        f"{value:,.0f}{' ' + unit if unit else ''}"
        if abs(value) >= 100
        else f"{value:.2f} {unit}".strip()
    )


def summary_lines(result: dict[str, Any]) -> list[str]:
    lines = [
        f"GPU check ({result['mode']}), device {result['device']}: {result['check_seconds']:.0f} s"
    ]
    for step in result["steps"]:
        lines.append(
            f"  step {step['name']:<10} exit {step['rc']:<8} {step['seconds']:>4} s "
            + (f"(limit {step['limit']} s)" if step["limit"] else "(in one process)")
        )
    tests = result["pytest"]
    lines.append(
        "  pytest -m gpu: "
        + (
            ", ".join(f"{v} {k}" for k, v in tests.items() if k != "tests")
            if tests
            else "no report"
        )
    )
    for title, rows in (("bench", result["bench_rows"]), ("stand-in", result["stand_in_rows"])):
        for row in rows.values():
            if not row.get("words_per_second"):
                continue
            gpu = f", GPU peak {row['gpu_peak_mb']:,.0f} MB" if row.get("gpu_peak_mb") else ""
            same = {True: ", identical", False: ", NOT identical"}.get(row.get("identical"), "")
            batch = f" @{row['batch']}" if row["batch"] else ""
            lines.append(
                f"  {title} {row['label']}{batch}: {row['words_per_second']:,.0f} words/s "
                f"({_number(row.get('ratio'), 'x')} (2)@32{same}{gpu})"
            )
    for run in (result["epochs"] or {}).get("runs", []):
        lines.append(
            f"  epoch {run['trainer']}{' bf16' if run['bf16'] else ''}: "
            f"{run['epoch_seconds']:.1f} s "
            f"(from {run['train_sentences']} + {run['dev_sentences']} sentences), "
            f"{EPOCHS} epochs {run['projected_seconds'] / 60:.1f} min"
        )
    for run in (result["scaling"] or {}).get("runs", []):
        lines.append(f"  CPU {run['workers']:>2} worker(s): {run['words_per_second']:,.0f} words/s")
    lines.append("goals:")
    for goal in result["goals"]:
        mark = "n/a" if goal["met"] is None else ("met" if goal["met"] else "NOT met")
        lines.append(
            f"  {goal['goal']}: {_number(goal['value'], goal['unit'])} "
            f"(goal {goal['comparison']} {_number(goal['target'], goal['unit'])}): {mark}"
        )
    return lines


def _kept(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What results.json keeps of each bench row that ran."""
    keys = (
        "label",
        "batch",
        "words",
        "words_per_second",
        "ratio",
        "identical",
        "comparison",
        "gpu_peak_mb",
        "device",
        "extra",
    )
    return {
        key: {k: row.get(k) for k in keys} for key, row in rows.items() if not row.get("skipped")
    }


def summary(args: argparse.Namespace) -> None:
    work = Path(args.work)
    steps = []
    if (work / "steps.tsv").is_file():
        for line in (work / "steps.tsv").read_text(encoding="utf-8").splitlines():
            name, rc, seconds, limit = line.split("\t")
            steps.append({"name": name, "rc": rc, "seconds": int(seconds), "limit": int(limit)})
    bench = _read(Path(args.bench))
    rows, stand_in = _bench_rows(bench), _bench_rows(bench, "stand-in")
    training, scale = _read(work / "epochs.json"), _read(work / "scaling.json")
    values = measures(rows, training, scale, args.seconds)
    values["identical_spans"] = (
        measures(stand_in, None, None, 0)["identical_spans"]
        in (
            None,
            True,
        )
        and values["identical_spans"]
    )
    device = next((row["device"] for row in rows.values() if row.get("device")), args.device)
    result = {
        "mode": args.mode,
        "device": device,
        "check_seconds": args.seconds,
        "steps": steps,
        "pytest": _pytest_counts(work / "pytest.xml"),
        "measures": values,
        "goals": judge(values),
        "bench_rows": _kept(rows),
        "stand_in_rows": _kept(stand_in),
        "bench_summary": bench["sections"][0]["summary"] if rows else None,
        "epochs": training,
        "scaling": scale,
    }
    _write(args.out, result)
    print("\n".join(summary_lines(result)))


# --- several steps in one process (--cpu-dry-run) -------------------------------------------


def steps(args: argparse.Namespace) -> None:
    """Runs steps one after another in this process, each `NAME -m MODULE ARGS...` or `NAME
    SCRIPT ARGS...` as `python` would run it, steps separated by `---`: torch, flair and spaCy are
    imported once, not once a step (the real check keeps every step in its own process, under
    its own time limit). Each step's exit status and seconds go to --tsv as the shell's `step`
    writes them; a step that fails does not stop the next."""
    import runpy
    import traceback

    commands, current = [], []
    for word in [*args.commands, "---"]:
        if word == "---":
            if current:
                commands.append(current)
            current = []
        else:
            current.append(word)
    for name, *command in commands:
        print(f"== {name} (in this process)", flush=True)
        began, saved = time.monotonic(), sys.argv
        try:
            if command[0] == "-m":
                sys.argv = command[1:]
                runpy.run_module(command[1], run_name="__main__", alter_sys=True)
            else:
                sys.argv = command
                runpy.run_path(command[0], run_name="__main__")
            rc = 0
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except Exception:
            traceback.print_exc()
            rc = 1
        finally:
            sys.argv = saved
            sys.stdout.flush()
        seconds = round(time.monotonic() - began)
        with open(args.tsv, "a", encoding="utf-8") as handle:
            handle.write(f"{name}\t{rc}\t{seconds}\t0\n")
        print(f"== {name}: exit {rc} after {seconds} s", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("epochs", help=epochs.__doc__.split(",")[0])
    one.add_argument("--corpus", type=Path, required=True)
    one.add_argument("--device", default="cuda")
    one.add_argument(
        "--max-sentences", type=int, help="fast trainer: training sentences (default: all)"
    )
    one.add_argument(
        "--flair-sentences", type=int, default=2000, help="Flair's: training sentences timed"
    )
    one.add_argument(
        "--flair-dev-sentences", type=int, default=1000, help="Flair's: dev sentences timed"
    )
    one.add_argument("--out", required=True)
    two = commands.add_parser("scaling", help=scaling.__doc__.split(",")[0])
    two.add_argument("--docs", required=True, help="JSONL documents to take texts from")
    two.add_argument("--workers", default="1,4,16")
    two.add_argument("--device", default="cpu")
    two.add_argument("--words-per-worker", type=int, default=150_000)
    two.add_argument("--out", required=True)
    three = commands.add_parser("summary", help="the table and the goals")
    three.add_argument("--work", required=True, help="the folder the steps wrote to")
    three.add_argument("--bench", required=True, help="the bench's JSON")
    three.add_argument("--mode", default="gpu")
    three.add_argument("--device", default="?")
    three.add_argument("--seconds", type=float, required=True, help="the whole check so far")
    three.add_argument("--out", required=True)
    four = commands.add_parser("steps", help="steps in this one process (--cpu-dry-run)")
    four.add_argument("--tsv", required=True, help="each step's exit status and seconds")
    four.add_argument("commands", nargs=argparse.REMAINDER, help="NAME ARGS... --- NAME ARGS...")
    args = parser.parse_args(argv)
    {"epochs": epochs, "scaling": scaling, "summary": summary, "steps": steps}[args.command](args)


if __name__ == "__main__":
    main()
