"""The bench's results: each row compared with the reference row, the goals of goals.toml
judged, the table printed."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from annotator.version import __version__

SCORE_TOLERANCE = 1e-4


GOALS = tomllib.loads((Path(__file__).parent / "goals.toml").read_text(encoding="utf-8"))


def compare_entities(
    reference: list[list], other: list[list], tolerance: float | None = SCORE_TOLERANCE
) -> tuple[bool, str]:
    """Identical spans and labels, scores within `tolerance` (None: scores not compared)."""
    ref = {tuple(e[:5]): e[5] for e in reference}
    got = {tuple(e[:5]): e[5] for e in other}
    if len(ref) != len(reference) or len(got) != len(other):
        return False, "duplicate spans"
    missing, extra = len(ref.keys() - got.keys()), len(got.keys() - ref.keys())
    worst = max((abs(ref[k] - got[k]) for k in ref.keys() & got.keys()), default=0.0)
    if missing or extra:
        return False, f"{missing} spans missing, {extra} extra of {len(ref)}"
    if tolerance is None:
        return True, f"{len(ref)} spans (calibrated scores, not compared)"
    if worst > tolerance:
        return False, f"{len(ref)} spans equal, max score difference {worst:.2g}"
    return True, f"{len(ref)} spans, max score difference {worst:.1g}"


@dataclass
class Row:
    key: str
    label: str
    timed: str
    batch: str = ""
    words: int = 0
    seconds: float | None = None
    words_per_second: float | None = None
    ratio: float | None = None  # to (2) at batch 32
    cpu_seconds: float | None = None  # process CPU time: far less sensitive to other load
    words_per_cpu_second: float | None = None
    cpu_ratio: float | None = None  # words per CPU second, to (2) at batch 32
    peak_rss_mb: float | None = None
    loaded_rss_mb: float | None = None
    gpu_peak_mb: float | None = None  # the peak of GPU memory torch allocated (on a GPU)
    device: str = ""
    engine: str = ""
    identical: bool | None = None
    comparison: str = ""
    entities: int | None = None
    runs: list[float] = field(default_factory=list)
    skipped: str | None = None
    best: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def best_result(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest run, its CPU time the least of all runs (each is a best-of on its own), with
    the highest peak RSS of all runs (memory is not noise)."""
    timed = [r for r in results if "seconds" in r]
    if not timed:
        return results[0]
    best = dict(min(timed, key=lambda r: r["seconds"]))
    best["cpu_seconds"] = min(r["cpu_seconds"] for r in timed)
    best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in timed)
    gpu = [r["gpu_peak_mb"] for r in timed if r.get("gpu_peak_mb") is not None]
    best["gpu_peak_mb"] = max(gpu, default=None)
    best["runs"] = [r["seconds"] for r in timed]
    best["cpu_runs"] = [r["cpu_seconds"] for r in timed]
    return best


_ORDER = ["1", "2@32", "2@", "3", "3w", "3p", "3n", "4", "5"]


def ordered_rows(rows: dict[str, Row]) -> list[Row]:
    def rank(row: Row) -> tuple[int, int, str]:
        if row.key.startswith("2@") and row.key != "2@32":
            return (2, int(row.key[2:]), "")
        if row.key in _ORDER:
            return (_ORDER.index(row.key), 0, "")
        base, _, precision = row.key.partition("@")  # 3@bf16 after 3
        return (_ORDER.index(base), 0, precision)

    return sorted(rows.values(), key=rank)


def goal_results(rows: dict[str, Row], section: str = "model") -> list[dict[str, Any]]:
    """The targets of goals.toml for `section` (a goal without one is every section's),
    judged on wall-clock words/s (CPU-time ratios alongside)."""

    def ratio(key: str, other: str, attribute: str) -> float | None:
        mine, theirs = rows.get(key), rows.get(other)
        a = getattr(mine, attribute) if mine else None
        b = getattr(theirs, attribute) if theirs else None
        return a / b if a and b else None

    goals = []
    for goal in GOALS["ratio"]:
        if goal.get("section", section) != section:
            continue
        wall = ratio(goal["row"], goal["against"], "words_per_second")
        goals.append(
            {
                "goal": goal["goal"],
                "target": goal["target"],
                "ratio": wall,
                "cpu_ratio": ratio(goal["row"], goal["against"], "words_per_cpu_second"),
                "met": None if wall is None else wall >= goal["target"],
            }
        )
    return goals


def environment(device: str, isolate: bool, threads: int | None) -> dict[str, Any]:
    """Where the bench ran: versions, machine, load, the options that shape every row."""
    env = {
        "annotator_version": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "device_option": device,
        "isolation": "a fresh process per row" if isolate else "none (one process)",
        "torch_threads_option": threads,
        "env": {
            name: os.environ.get(name)
            for name in (
                "OMP_NUM_THREADS",
                "OMP_WAIT_POLICY",
                "MKL_NUM_THREADS",
                "ANNOTATOR_SPACY_NER",
            )
        },
    }
    try:
        from importlib.metadata import version

        for package in ("torch", "flair", "spacy", "pyarrow"):
            env[f"{package}_version"] = version(package)
    except Exception:  # pragma: no cover - metadata missing in odd installs
        pass
    return env


def section_summary(section: dict[str, Any], repeat: int, flair_docs: int | None) -> str:
    """The line under a section's title: its input, device and threads."""
    device = next((r["device"] for r in section["rows"] if r["device"]), "?")
    threads = sorted(
        {r["extra"]["torch_threads"] for r in section["rows"] if "torch_threads" in r["extra"]}
    )
    wait = os.environ.get("OMP_WAIT_POLICY")
    summary = (
        f"{section['documents']:,} documents, {section['sentences']:,} "
        f"sentences, {section['words']:,} words (spaCy tokens), "
        f"{section['characters']:,} characters; device {device}, torch "
        f"threads {'/'.join(map(str, threads)) or '?'}"
        f"{', OMP_WAIT_POLICY=' + wait if wait else ''}; "
        f"best of {repeat} run(s) per row"
    )
    if section.get("flair_words", section["words"]) != section["words"]:
        summary += (
            f"; Flair's rows (1, 2) on the first {flair_docs:,} "
            f"documents ({section['flair_words']:,} words)"
        )
    return summary


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def format_section(section: dict[str, Any], per_row_rss: bool) -> str:
    lines = [f"== {section['title']} ==", section["summary"]]
    header = (
        f"{'row':<38} {'batch':>9} {'seconds':>8} {'words/s':>9} {'x (2)@32':>8} "
        f"{'cpu s':>7} {'x cpu':>6} {'peak RSS':>9}  {'device':<6} identical"
    )
    lines += [header, "-" * len(header)]
    star = "" if per_row_rss else "*"
    for row in section["rows"]:
        label = row["label"] + (" [best]" if row["best"] and row["key"] != "2@32" else "")
        if row["skipped"]:
            lines.append(f"{label:<38} {'':>9} skipped: {row['skipped']}")
            continue
        if row["identical"] is None:
            same = (
                row["comparison"]
                if row["comparison"] in ("reference", "another model", "no decoding")
                else "-"
            )
            same = {
                "reference": "(reference)",
                "another model": "n/a (another model)",
                "no decoding": "n/a (no decoding)",
            }.get(same, same)
        else:
            same = ("yes" if row["identical"] else "NO") + f" ({row['comparison']})"
        lines.append(
            f"{label:<38} {row['batch']:>9} {_fmt(row['seconds'], '.2f'):>8} "
            f"{_fmt(row['words_per_second'], ',.0f'):>9} {_fmt(row['ratio'], '.2f', 'x'):>8} "
            f"{_fmt(row['cpu_seconds'], '.2f'):>7} {_fmt(row['cpu_ratio'], '.2f', 'x'):>6} "
            f"{_fmt(row['peak_rss_mb'], ',.0f', ' MB' + star):>9}  "
            f"{row['device'].split(' ')[0]:<6} {same}"
            + (f"; GPU peak {row['gpu_peak_mb']:,.0f} MB" if row.get("gpu_peak_mb") else "")
        )
    goals = []
    for goal in section["goals"]:
        mark = "n/a" if goal["met"] is None else ("met" if goal["met"] else "NOT met")
        goals.append(
            f"  {goal['goal']}: {_fmt(goal['ratio'], '.2f', 'x')} (goal >= "
            f"{goal['target']:g}x: {mark}; by CPU time "
            f"{_fmt(goal.get('cpu_ratio'), '.2f', 'x')})"
        )
    lines.append("goals (wall-clock words/s):")
    lines += goals
    memory = section.get("memory")
    if memory:
        growth = memory["growth_percent"]
        lines.append(
            f"memory: (3) peak RSS {memory['peak_rss_mb_1x']:,.0f} MB on the corpus, "
            f"{memory['peak_rss_mb_10x']:,.0f} MB on it x{memory['factor']} "
            f"({memory['words_10x']:,} words, {_fmt(memory['words_per_second_10x'], ',.0f')}"
            f" words/s): {_fmt(growth, '+.1f', '%')} (goal < {memory['goal_percent']:.0f}%, "
            f"{'met' if memory['met'] else 'NOT met'})"
        )
    first = section.get("first_answer")
    if first:
        lines.append(
            f"first answer: {first['seconds']:.2f} s for one document of {first['characters']} "
            f"characters through `annotator annotate` in a fresh process, "
            f"{first.get('engine', '?')} engine (goal <= "
            f"{first['goal_seconds']:.1f} s); a usage error answers in "
            f"{first['usage_error_seconds']:.2f} s (goal <= "
            f"{first['goal_usage_error_seconds']:.1f} s): {'met' if first['met'] else 'NOT met'}"
        )
    if not per_row_rss:
        lines.append("* --no-isolate: peak RSS of the whole process so far, not of the row")
    return "\n".join(lines)
