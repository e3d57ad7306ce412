"""The per-epoch bookkeeping both trainers share: metrics.json, the best model, the checkpoint
that `--resume` continues from, the annealing state and the training curves.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from annotator.errors import AnnotatorError
from annotator.files import write_json_atomically
from annotator.records import percent
from annotator.training.config import CHECKPOINT, METRICS, TRAINING_PNG, TrainConfig
from annotator.views.figures import plot_training

log = logging.getLogger("annotator")


@dataclass
class DevScores:
    """An epoch's dev evaluation: Flair's micro-averaged span scores and loss per token."""

    precision: float | None
    recall: float | None
    f1: float
    loss: float | None = None


class RunBook:
    """The per-epoch bookkeeping both trainers share (Flair's ModelTrainer and the fast trainer).

    It owns what must survive ``--resume``: metrics.json (one entry per epoch), the best model
    (best dev micro-F1, kept here rather than in a trainer's local variables), checkpoint.pt,
    and the state of the AnnealOnPlateau scheduler, which it steps after each evaluation as
    Flair's AnnealingPlugin does (mode max on dev micro-F1, dev loss breaking ties).  The state
    is saved *after* that step, so a resumed run starts with the learning rate and patience
    counters the next epoch would have had.
    """

    def __init__(
        self,
        output: Path,
        state: dict[str, Any],
        config: TrainConfig,
        on_epoch: Callable[[Path], None] | None = None,
    ) -> None:
        self.output, self.state, self.config, self.on_epoch = output, state, config, on_epoch
        self.started = time.time()
        # merged into every saved model's card (Flair's ModelTrainer replaces the card)
        self.card: dict[str, Any] = {}
        self.progress = False  # a bar per epoch on stderr (the fast trainer)

    @property
    def epoch(self) -> int:
        return int(self.state["epoch"])

    @property
    def learning_rate(self) -> float:
        return float(self.state["learning_rate"])

    def make_scheduler(self, optimizer, has_dev: bool = True):
        """Flair's AnnealOnPlateau as its AnnealingPlugin sets it up (mode max on dev F1, min on
        the training loss without a dev split), or the config's fixed schedule; with the saved
        state restored."""
        from flair.training_utils import AnnealOnPlateau

        if self.config.anneal_after:
            scheduler: Any = FixedSchedule(
                optimizer, self.config.anneal_factor, self.config.anneal_after
            )
        else:
            scheduler = AnnealOnPlateau(
                optimizer,
                mode="max" if has_dev else "min",
                factor=self.config.anneal_factor,
                patience=self.config.patience,
                initial_extra_patience=0,
            )
        if self.state.get("scheduler"):
            vars(scheduler).update(self.state["scheduler"])
        return scheduler

    def start_epoch(self) -> None:
        self.started = time.time()

    def end_epoch(
        self,
        model,
        epoch: int,
        train_loss: float | None,
        dev: DevScores | None,
        optimizer,
        scheduler,
    ) -> bool:
        """Anneal, record the epoch, save best model / checkpoint / metrics; True: stop training."""
        state = self.state
        lr = float(optimizer.param_groups[0]["lr"])
        note = ""
        if scheduler is not None:
            # Flair steps on (dev micro-F1, dev loss), or on the train loss without a dev split
            scores = (dev.f1, dev.loss) if dev is not None else (train_loss,)
            if scheduler.step(*scores):
                why = (
                    "as scheduled"
                    if self.config.anneal_after
                    else f"{self.config.patience + 1} epochs without improvement"
                )
                note = f"; {why}: learning rate annealed to {optimizer.param_groups[0]['lr']:g}"
            elif scheduler.num_bad_epochs:
                note = f"; {scheduler.num_bad_epochs} epochs without improvement"
        entry = {
            "epoch": epoch,
            "train_loss": train_loss,
            "dev_precision": dev.precision if dev else None,
            "dev_recall": dev.recall if dev else None,
            "dev_f1": dev.f1 if dev else None,
            "learning_rate": lr,
            "seconds": round(time.time() - self.started, 2),
        }
        state["epochs"].append(entry)
        state["last_train_loss"] = train_loss
        state["last_dev_p"], state["last_dev_r"] = entry["dev_precision"], entry["dev_recall"]
        best = dev is None or dev.f1 > state["best_dev_f1"] or state["best_epoch"] == 0
        model.model_card = {**(getattr(model, "model_card", None) or {}), **self.card}
        if best:
            state["best_epoch"] = epoch
            if dev is not None:
                state["best_dev_f1"] = dev.f1
            model.save(self.output / "best-model.pt")
        state["scheduler"] = (
            {k: v for k, v in vars(scheduler).items() if isinstance(v, (int, float, str, bool))}
            if scheduler
            else None
        )
        state["epoch"], state["learning_rate"] = epoch, float(optimizer.param_groups[0]["lr"])
        model.save(self.output / CHECKPOINT)
        write_json_atomically(self.output / METRICS, state)
        draw_curves(self.output)
        dev_text = (
            f"dev P {percent(dev.precision)} R {percent(dev.recall)} F1 {percent(dev.f1)}"
            if dev is not None and dev.precision is not None and dev.recall is not None
            else (f"dev F1 {percent(dev.f1)}" if dev is not None else "no dev split")
        )
        log.info(
            "epoch %d/%d: train loss %.4f, %s%s, lr %g, %.1f s%s",
            epoch,
            self.config.max_epochs,
            train_loss if train_loss is not None else float("nan"),
            dev_text,
            " (best)" if best else "",
            lr,
            entry["seconds"],
            note,
        )
        if self.on_epoch is not None:
            self.on_epoch(self.output)
        return scheduler is not None and state["learning_rate"] < self.config.min_learning_rate


class FixedSchedule:
    """Multiplies the learning rate by `factor` after each epoch listed in `after` (the
    scheduler interface the RunBook steps: ``step`` is True when it annealed)."""

    def __init__(self, optimizer, factor: float, after: list) -> None:
        self.optimizer, self.factor, self.after = optimizer, factor, {int(epoch) for epoch in after}
        self.epochs_done = 0
        self.num_bad_epochs = 0

    def step(self, *scores: float | None) -> bool:
        self.epochs_done += 1
        if self.epochs_done not in self.after:
            return False
        for group in self.optimizer.param_groups:
            group["lr"] *= self.factor
        return True


def run_plugin(book: RunBook, anneal: bool, has_dev: bool):
    """Flair's ModelTrainer reports each epoch to the shared RunBook through this plugin.

    With `anneal`, the plugin replaces Flair's AnnealingPlugin (the RunBook steps the same
    AnnealOnPlateau), so the scheduler's state is recorded after its step, not before.
    """
    from flair.trainers.plugins.base import TrainerPlugin, TrainingInterrupt

    class RunPlugin(TrainerPlugin):
        scheduler = None

        @TrainerPlugin.hook
        def after_setup(self, **kw):
            self.scheduler = (
                book.make_scheduler(self.trainer.optimizer, has_dev) if anneal else None
            )

        @TrainerPlugin.hook
        def before_training_epoch(self, epoch, **kw):
            book.start_epoch()
            self.scores: dict[str, float] = {}

        @TrainerPlugin.hook
        def metric_recorded(self, record):
            names = {
                ("train", "loss"): "loss",
                ("dev", "micro avg", "precision"): "p",
                ("dev", "micro avg", "recall"): "r",
            }
            name = names.get(tuple(record.name))
            if name is not None:
                self.scores[name] = float(record.value)

        @TrainerPlugin.hook
        def after_evaluation(self, epoch, validation_scores, **kw):
            dev = None
            if has_dev and validation_scores:
                dev = DevScores(
                    self.scores.get("p"),
                    self.scores.get("r"),
                    float(validation_scores[0]),
                    float(validation_scores[1]) if len(validation_scores) > 1 else None,
                )
            if book.end_epoch(
                self.model,
                epoch,
                self.scores.get("loss"),
                dev,
                self.trainer.optimizer,
                self.scheduler,
            ):
                raise TrainingInterrupt("learning rate too small - quitting training!")

    return RunPlugin()


def draw_curves(output: Path) -> None:
    """training.png beside the model, redrawn every epoch so that a long run can be watched."""
    try:
        plot_training(read_metrics(output), output / TRAINING_PNG, output.name)
    except Exception as exc:  # a figure is never worth stopping a training run for
        log.warning("could not draw the training curves: %s", exc)


def run_folder(run: str | Path) -> Path:
    run = Path(run)
    return run.parent if run.is_file() else run


def read_metrics(run: str | Path) -> dict[str, Any]:
    """The per-epoch log a training run writes beside its model (a run folder, its model file,
    or the metrics JSON file itself, e.g. the packaged model's)."""
    folder = run_folder(run)
    path = Path(run) if str(run).endswith(".json") else folder / METRICS
    if str(run).endswith(".json") and not path.exists():
        raise AnnotatorError(f"{path}: no such metrics file")
    if not folder.exists():
        raise AnnotatorError(f"{folder}: no such model folder")
    if not path.exists():
        raise AnnotatorError(
            f"{folder}: no {METRICS} here; plot needs the folder an "
            "`annotator train` run wrote (it logs every epoch to metrics.json)"
        )
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AnnotatorError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("epochs"), list):
        raise AnnotatorError(f"{path}: has no 'epochs' list; is this a training log?")
    return metrics
