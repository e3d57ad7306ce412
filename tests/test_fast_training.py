"""The fast trainer: Flair's SequenceTagger, Flair's loss and training semantics, vectorised
batches.

Everything is built in-process from the synthetic corpus and tiny models: no downloads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

flair = pytest.importorskip("flair")

from flair.data import Dictionary, Sentence  # noqa: E402
from flair.embeddings import CharacterEmbeddings, FlairEmbeddings, StackedEmbeddings  # noqa: E402
from flair.models import LanguageModel, SequenceTagger  # noqa: E402
from flair.models.sequence_tagger_utils.viterbi import ViterbiLoss  # noqa: E402
from flair.training_utils import AnnealOnPlateau  # noqa: E402
from torch.nn.utils.rnn import PackedSequence  # noqa: E402

from annotator.bench.training import epoch_times, time_epoch
from annotator.cli import cli  # noqa: E402
from annotator.corpus import load_corpus
from annotator.embeddings import SharedVectorEmbeddings  # noqa: E402
from annotator.errors import AnnotatorError  # noqa: E402
from annotator.evaluation import evaluate_tagger
from annotator.tagging.crf import crf_loss_packed
from annotator.tagging.engines import make_engine
from annotator.tagging.fast import FastSequenceTagger
from annotator.tagging.lstm import _LSTMDirection, lstm_packed
from annotator.tagging.packed import GoldLayout
from annotator.training import recipes, runbook  # noqa: E402
from annotator.training.config import TrainConfig, resolve_config
from annotator.training.fast import FastTrainer, unsupported_reason
from annotator.training.runbook import DevScores, RunBook
from annotator.training.train import (
    choose_trainer,  # noqa: E402
    train,
)
from tests.synthetic import write_corpus  # noqa: E402

TINY = {"hidden_size": 24, "word_embedding_dim": 16, "min_word_freq": 1, "device": "cpu"}
NO_DROPOUT = {"dropout": 0.0, "word_dropout": 0.0, "locked_dropout": 0.0}


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("fast-corpus"))


@pytest.fixture(scope="module")
def corpus(corpus_dir):
    return load_corpus(corpus_dir)


# --- the same loss and gradients as Flair's forward_loss --------------------------------------


def _quirk_sentences() -> list[Sentence]:
    """Repeated tokens (Flair's char-embedding re-sort quirk), characters and words never seen."""
    rows = [
        (
            ["Berlin", "and", "Berlin", "met", "Xqzé", "ß", "Berlin", "ÿ", "Berlin"],
            [(0, 1, "LOC"), (4, 6, "PER")],
        ),
        (["é", "è", "é", "Paris"], [(3, 4, "LOC")]),  # é and è: both <unk> characters only
        (["Reuters"], [(0, 1, "ORG")]),
        (
            ["John", "Smith", "John", "Smith", "said", "日本", "."],
            [(0, 2, "PER"), (2, 4, "PER"), (5, 6, "MISC")],
        ),
    ]
    sentences = []
    for words, spans in rows:
        sentence = Sentence(words)
        for start, end, label in spans:
            sentence[start:end].add_label("ner", label)
        sentences.append(sentence)
    return sentences


def _tiny_lm(forward: bool) -> LanguageModel:
    chars = Dictionary(add_unk=True)
    for char in " \nabcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.,":
        chars.add_item(char)
    return LanguageModel(
        chars, is_forward_lm=forward, hidden_size=12, nlayers=1, embedding_size=6, has_decoder=False
    )


def _offline(corpus, **overrides):
    config = resolve_config("offline", overrides={**TINY, **NO_DROPOUT, **overrides})
    return recipes.build_tagger(config, corpus, "ner")


def _stacked(corpus, **kwargs):
    """Frozen Flair LMs (cached by the fast trainer), shared vectors, words and characters."""
    vocab = recipes.build_vocabulary(corpus.train, 1)
    words = recipes.learned_word_embeddings(vocab, 8)
    chars = CharacterEmbeddings(recipes.build_char_dictionary(corpus.train), 6, 5)
    vectors = SharedVectorEmbeddings(
        ["berlin", "paris", "john", "the"], torch.tensor([0, 1, 2, 0]), torch.randn(3, 4)
    )
    stack = StackedEmbeddings(
        [FlairEmbeddings(_tiny_lm(True)), FlairEmbeddings(_tiny_lm(False)), words, chars, vectors]
    )
    dictionary = corpus.make_label_dictionary("ner", add_unk=False)
    return SequenceTagger(stack, dictionary, "ner", hidden_size=10, **NO_DROPOUT, **kwargs)


VARIANTS = {
    "offline preset (word+char BiLSTM-CRF)": lambda corpus: _offline(corpus),
    "flair LMs + vectors + word + char, 2-layer unidirectional CRF, no reprojection": lambda c: (
        _stacked(c, rnn_layers=2, bidirectional=False, reproject_embeddings=False)
    ),
    "word+char BiLSTM softmax": lambda corpus: _offline(corpus, use_crf=False),
    "word+char GRU-CRF (torch's own RNN)": lambda corpus: _stacked(corpus, rnn_type="GRU"),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_batch_loss_and_gradients_equal_flairs_forward_loss(corpus, variant):
    torch.manual_seed(0)
    sentences = list(corpus.train)[:24] + _quirk_sentences()
    assert_flairs_loss_and_gradients(VARIANTS[variant](corpus), sentences)


def assert_flairs_loss_and_gradients(tagger, sentences, rtol: float = 1e-5) -> None:
    """The fast trainer's loss and gradients on a batch are Flair's forward_loss ones (also run
    on a GPU by tests/test_gpu.py)."""
    if tagger.rnn.num_layers > 1:
        tagger.rnn.dropout = (
            0.0  # Flair sets 0.5 between layers; the comparison needs no randomness
        )
    tagger.train()
    loss, count = tagger.forward_loss(sentences)
    loss.backward()
    expected = {name: p.grad.clone() for name, p in tagger.named_parameters() if p.grad is not None}
    for sentence in sentences:
        sentence.clear_embeddings()
    tagger.zero_grad(set_to_none=True)

    trainer = FastTrainer(tagger, sentences)
    tagger.train()
    ours, our_count = trainer.batch_loss(np.arange(len(sentences)))
    ours.backward()
    assert our_count == count
    assert ours.item() == pytest.approx(loss.item(), rel=rtol)
    for name, parameter in tagger.named_parameters():
        theirs = expected.get(name)
        mine = parameter.grad
        if theirs is None or mine is None:  # unused weights: no gradient, or an all-zero one
            assert (theirs is None or not theirs.any()) and (mine is None or not mine.any()), name
            continue
        assert torch.allclose(mine, theirs, atol=1e-4, rtol=rtol), (
            f"{name}: max difference {(mine - theirs).abs().max():.2e}"
        )


def test_crf_loss_equals_viterbi_loss_on_random_batches():
    torch.manual_seed(1)
    dictionary = Dictionary(add_unk=False)
    for tag in ["O", "B-X", "I-X", "B-Y", "I-Y", "<START>", "<STOP>"]:
        dictionary.add_item(tag)
    k, start, stop = (
        len(dictionary),
        dictionary.get_idx_for_item("<START>"),
        dictionary.get_idx_for_item("<STOP>"),
    )
    for lengths in ([7, 7, 5, 3, 1], [1], [12, 2, 2, 2]):
        transitions = torch.randn(k, k, dtype=torch.float64, requires_grad=True)
        padded = torch.randn(len(lengths), max(lengths), k, dtype=torch.float64, requires_grad=True)
        gold = [torch.randint(0, 5, (n,)) for n in lengths]
        crf = padded.unsqueeze(-1) + transitions.unsqueeze(0).unsqueeze(0)
        flair_loss = ViterbiLoss(dictionary)(
            (crf, torch.tensor(lengths), transitions), torch.cat(gold)
        )
        flair_grads = torch.autograd.grad(flair_loss, [padded, transitions])

        flat = torch.cat([padded[b, :n] for b, n in enumerate(lengths)])
        layout = GoldLayout.of(
            np.array(lengths), torch.cat(gold).numpy(), start, torch.device("cpu")
        )
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        packed_rows = [
            starts[b] + t for t in range(max(lengths)) for b, n in enumerate(lengths) if n > t
        ]
        ours = crf_loss_packed(flat[packed_rows], transitions, layout, start, stop)
        assert ours.item() == pytest.approx(flair_loss.item(), rel=1e-10)
        for mine, theirs in zip(torch.autograd.grad(ours, [padded, transitions]), flair_grads):
            assert torch.allclose(mine, theirs, atol=1e-9)


def test_step_wise_lstm_equals_torchs_packed_lstm():
    torch.manual_seed(2)
    sizes = [5, 5, 4, 2, 2, 1]
    rnn = torch.nn.LSTM(6, 7, num_layers=2, bidirectional=True, batch_first=True).double()
    x = torch.randn(sum(sizes), 6, dtype=torch.float64, requires_grad=True)
    expected = rnn(PackedSequence(x, torch.tensor(sizes)))[0].data
    ours = lstm_packed(rnn, x, sizes)
    assert torch.allclose(ours, expected, atol=1e-12)
    weights = torch.randn_like(expected)
    parameters = [x, *rnn.parameters()]
    for mine, theirs in zip(
        torch.autograd.grad((ours * weights).sum(), parameters),
        torch.autograd.grad((expected * weights).sum(), parameters),
    ):
        assert torch.allclose(mine, theirs, atol=1e-10)
    for reverse in (False, True):
        gx = torch.randn(sum(sizes), 16, dtype=torch.float64, requires_grad=True)
        w_hh = torch.randn(16, 4, dtype=torch.float64, requires_grad=True)

        def direction(a, b, reverse=reverse):
            return _LSTMDirection.apply(a, b, tuple(sizes), reverse)

        assert torch.autograd.gradcheck(direction, (gx, w_hh))


# --- dev scores are Flair's ----------------------------------------------------------------------


def test_dev_evaluation_equals_flairs_evaluate(corpus):
    torch.manual_seed(3)
    tagger = _offline(corpus)
    trainer = FastTrainer(tagger, corpus.train, corpus.dev, batch_size=16)
    optimizer = torch.optim.SGD(tagger.parameters(), lr=0.2)
    for epoch in range(1, 9):  # until half-trained: some spans right, some wrong
        trainer.train_epoch(optimizer, epoch)
        ours = trainer.evaluate()
        if 0.2 < ours.f1 < 0.95:
            break
    flair_result = tagger.evaluate(list(corpus.dev), gold_label_type="ner", mini_batch_size=64)
    micro = flair_result.classification_report["micro avg"]
    assert 0 < ours.f1 < 1
    assert (ours.precision, ours.recall, ours.f1) == pytest.approx(
        (micro["precision"], micro["recall"], micro["f1-score"]), abs=1e-12
    )
    assert ours.loss == pytest.approx(flair_result.loss, rel=1e-5)


# --- a whole run ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fast_run(corpus_dir, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("fast-run") / "model"
    config = resolve_config(
        "offline",
        overrides={
            **TINY,
            "trainer": "fast",
            "max_epochs": 6,
            "learning_rate": 0.2,
            "batch_size": 16,
        },
    )
    result = train(corpus_dir, output, config)
    assert result.finished and result.epochs == 6
    return output


def test_fast_run_learns_and_saves_an_ordinary_flair_tagger(fast_run, corpus):
    metrics = json.loads((fast_run / "metrics.json").read_text())
    assert metrics["finished"] and metrics["test"]["micro"]["f1"] > 0.8
    for name in ("best-model.pt", "final-model.pt", "checkpoint.pt", "config.toml", "training.log"):
        assert (fast_run / name).exists(), name
    assert [e["epoch"] for e in metrics["epochs"]] == list(range(1, 7))
    assert set(metrics["epochs"][0]) == {
        "epoch",
        "train_loss",
        "dev_precision",
        "dev_recall",
        "dev_f1",
        "learning_rate",
        "seconds",
    }
    log_text = (fast_run / "training.log").read_text()
    assert log_text.count("training with the fast trainer") == 1
    assert all(f"epoch {n}/6: train loss" in log_text for n in range(1, 7))

    tagger = SequenceTagger.load(fast_run / "best-model.pt")
    assert type(tagger) is SequenceTagger and tagger.use_crf
    words = [[t.text for t in s] for s in list(corpus.test)[:40]]
    words.append(["Angela", "Merkel", "met", "Li", "Wei", "in", "Tokyo", "and", "Tokyo"])
    flair_sentences = [Sentence(w) for w in words]
    tagger.predict(flair_sentences)
    expected = [
        [(s[0].idx - 1, s[-1].idx, s.get_label("ner").value) for s in sentence.get_spans("ner")]
        for sentence in flair_sentences
    ]
    assert any(expected)
    assert [
        [span[:3] for span in spans] for spans in FastSequenceTagger(tagger).predict(words)
    ] == expected
    engine = make_engine(tagger, engine="flair")
    assert [[span[:3] for span in spans] for spans in engine.predict(words)] == expected


def test_recorded_dev_f1_equals_a_fresh_flair_evaluation(fast_run, corpus):
    metrics = json.loads((fast_run / "metrics.json").read_text())
    fresh = evaluate_tagger(SequenceTagger.load(fast_run / "final-model.pt"), corpus.dev)
    last = metrics["epochs"][-1]
    assert last["dev_f1"] == pytest.approx(fresh.micro.f1, abs=1e-9)
    assert (last["dev_precision"], last["dev_recall"]) == pytest.approx(
        (fresh.micro.precision, fresh.micro.recall), abs=1e-9
    )
    assert len({round(e["dev_f1"], 6) for e in metrics["epochs"]}) > 1


def test_interrupted_fast_run_resumes_and_may_continue_with_flairs_trainer(corpus_dir, tmp_path):
    config = resolve_config("offline", overrides={**TINY, "max_epochs": 3, "trainer": "fast"})

    def stop_after_first(output: Path) -> None:
        raise KeyboardInterrupt  # Ctrl-C: the fast trainer stops like Flair's

    first = train(corpus_dir, tmp_path / "run", config, on_epoch=stop_after_first)
    assert first.epochs == 1 and not first.finished
    assert (tmp_path / "run" / "final-model.pt").exists()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (
        not metrics["finished"]
        and metrics["epoch"] == 1
        and metrics["scheduler"]["last_epoch"] == 1
    )

    result = CliRunner().invoke(
        cli, ["train", str(corpus_dir), "-o", str(tmp_path / "run"), "--resume"]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3] and metrics["finished"]
    assert (
        metrics["scheduler"]["last_epoch"] == 3
    )  # one annealing step per epoch, across the resume


def test_flair_trainer_keeps_working_and_writes_the_same_records(corpus_dir, fast_run, tmp_path):
    small = write_corpus(tmp_path / "corpus", sizes=(40, 12, 12))
    config = resolve_config("offline", overrides={**TINY, "max_epochs": 2, "trainer": "flair"})

    def stop_after_first(output: Path) -> None:
        raise KeyboardInterrupt

    train(small, tmp_path / "run", config, on_epoch=stop_after_first)
    # a Flair run can be continued by the fast trainer: both write the same checkpoint
    result = CliRunner().invoke(
        cli, ["train", str(small), "-o", str(tmp_path / "run"), "--resume", "--trainer", "fast"]
    )
    assert result.exit_code == 0, result.output
    flair_metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    fast_metrics = json.loads((fast_run / "metrics.json").read_text())
    assert set(flair_metrics) == set(fast_metrics)
    assert [set(e) for e in flair_metrics["epochs"]] == [set(fast_metrics["epochs"][0])] * 2
    log_text = (tmp_path / "run" / "training.log").read_text()
    assert "training with Flair's ModelTrainer (trainer = flair)" in log_text
    assert "epoch 1/2: train loss" in log_text and "epoch 2/2: train loss" in log_text
    fresh = evaluate_tagger(
        SequenceTagger.load(tmp_path / "run" / "final-model.pt"), load_corpus(small).dev
    )
    assert flair_metrics["epochs"][-1]["dev_f1"] == pytest.approx(fresh.micro.f1, abs=1e-9)


# --- shared bookkeeping: annealing as Flair's AnnealingPlugin, across --resume -----------------


class _NoModel:
    def save(self, path) -> None:
        Path(path).write_bytes(b"")


def test_run_book_anneals_like_flair_and_resumes_the_schedule(tmp_path, monkeypatch):
    monkeypatch.setattr(runbook, "draw_curves", lambda output: None)
    config = TrainConfig(patience=1, anneal_factor=0.5, min_learning_rate=0.02, max_epochs=20)
    scores = [
        (0.5, 1.0),
        (0.6, 0.9),
        (0.6, 0.95),
        (0.55, 0.8),
        (0.6, 0.7),
        (0.58, 0.7),
        (0.5, 0.7),
        (0.4, 0.7),
        (0.3, 0.7),
        (0.2, 0.7),
    ]

    reference_optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    reference = AnnealOnPlateau(reference_optimizer, mode="max", factor=0.5, patience=1)
    expected = []
    for f1, loss in scores:
        expected.append(reference_optimizer.param_groups[0]["lr"])
        reference.step(f1, loss)
        if reference_optimizer.param_groups[0]["lr"] < 0.02:
            break

    def run(book: RunBook, epochs) -> list[float]:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=book.learning_rate)
        scheduler = book.make_scheduler(optimizer)
        lrs = []
        for epoch in epochs:
            lrs.append(optimizer.param_groups[0]["lr"])
            f1, loss = scores[epoch - 1]
            if book.end_epoch(
                _NoModel(), epoch, 0.1, DevScores(f1, f1, f1, loss), optimizer, scheduler
            ):
                break
        return lrs

    state = {
        "corpus": {},
        "epochs": [],
        "best_epoch": 0,
        "best_dev_f1": 0.0,
        "epoch": 0,
        "learning_rate": 0.1,
        "scheduler": None,
    }
    (tmp_path / "a").mkdir()
    first = run(RunBook(tmp_path / "a", state, config), range(1, 4))
    resumed_state = json.loads((tmp_path / "a" / "metrics.json").read_text())
    second = run(RunBook(tmp_path / "a", resumed_state, config), range(4, 11))
    assert first + second == expected
    assert [e["learning_rate"] for e in resumed_state["epochs"]] == expected
    assert resumed_state["best_epoch"] == 2 and resumed_state["best_dev_f1"] == 0.6
    assert resumed_state["learning_rate"] < config.min_learning_rate  # the run is finished


# --- choosing a trainer ---------------------------------------------------------------------


def test_trainer_choice_and_settings(corpus):
    offline = _offline(corpus)
    assert unsupported_reason(offline) is None
    assert choose_trainer(TrainConfig(), offline)[0] == "fast"
    assert choose_trainer(TrainConfig(trainer="flair"), offline)[0] == "flair"
    transformer = TrainConfig.for_preset("transformer")
    assert "transformer" in unsupported_reason(offline, transformer)
    assert choose_trainer(transformer, offline)[0] == "flair"
    transformer.trainer = "fast"
    with pytest.raises(AnnotatorError, match="--trainer fast cannot train this model"):
        choose_trainer(transformer, offline)
    with pytest.raises(AnnotatorError, match="trainer must be one of auto, fast, flair"):
        resolve_config("offline", overrides={"trainer": "quick"})
    result = CliRunner().invoke(cli, ["train", ".", "-o", "x", "--trainer", "quick"])
    assert result.exit_code == 2 and "--trainer" in result.output


def test_time_epoch_times_both_trainers(corpus_dir):
    config = resolve_config("offline", overrides={**TINY, "batch_size": 8})
    for trainer in ("fast", "flair"):
        assert 0 < time_epoch(corpus_dir, config, trainer, max_sentences=24) < 60
        train, dev = epoch_times(corpus_dir, config, trainer, 16, max_dev_sentences=8)
        assert train > 0 and dev > 0
        assert epoch_times(corpus_dir, config, trainer, 8, max_dev_sentences=0)[1] < 0.01
    with pytest.raises(ValueError):
        time_epoch(corpus_dir, config, "other", max_sentences=4)
