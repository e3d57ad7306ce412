import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from annotator.cli import cli
from annotator.errors import AnnotatorError
from annotator.training.config import TrainConfig, resolve_config
from annotator.training.train import train
from tests.synthetic import write_corpus

SENTENCES = [
    ["John", "Smith", "works", "for", "Siemens", "in", "Berlin", "."],
    ["Angela", "Merkel", "met", "Li", "Wei", "in", "Tokyo", "and", "Tokyo", "."],
    ["Prices", "rose", "in", "Xqzville", "3", "percent", "."],
]


def _predict(tagger, sentences=SENTENCES):
    from flair.data import Sentence

    flair_sentences = [Sentence(list(tokens)) for tokens in sentences]
    tagger.predict(flair_sentences)
    return [
        [
            (s.text, s.get_label("ner").value, round(s.get_label("ner").score, 5))
            for s in sentence.get_spans("ner")
        ]
        for sentence in flair_sentences
    ]


def _word_vectors(path: Path, words: list[str], dim: int = 8) -> Path:
    import random

    rng = random.Random(0)
    lines = [f"{len(words)} {dim}"] + [
        " ".join([word] + [f"{rng.uniform(-1, 1):.4f}" for _ in range(dim)]) for word in words
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _language_model(path: Path, forward: bool) -> Path:
    from flair.data import Dictionary
    from flair.models import LanguageModel

    chars = Dictionary(add_unk=True)
    for char in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,\n":
        chars.add_item(char)
    LanguageModel(chars, is_forward_lm=forward, hidden_size=16, nlayers=1, embedding_size=8).save(
        path
    )
    return path


def test_seed_preset_stacks_local_stand_ins_trains_saves_and_evaluates(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", sizes=(40, 10, 10))
    vectors = _word_vectors(tmp_path / "vectors.txt", ["john", "smith", "berlin", "the", "."])
    forward = _language_model(tmp_path / "fw.pt", True)
    backward = _language_model(tmp_path / "bw.pt", False)
    result = CliRunner().invoke(
        cli,
        [
            "train",
            str(corpus),
            "--output",
            str(tmp_path / "model"),
            "--preset",
            "seed",
            "--word-vectors",
            str(vectors),
            "--flair-forward",
            str(forward),
            "--flair-backward",
            str(backward),
            "--max-epochs",
            "1",
            "--hidden-size",
            "16",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    model = tmp_path / "model"
    for name in ("best-model.pt", "final-model.pt", "config.toml", "metrics.json", "training.log"):
        assert (model / name).exists(), name
    from flair.models import SequenceTagger

    tagger = SequenceTagger.load(model / "best-model.pt")
    kinds = [type(e).__name__ for e in tagger.embeddings.embeddings]
    assert kinds == ["WordEmbeddings", "FlairEmbeddings", "FlairEmbeddings"]
    assert tagger.hidden_size == 16 and tagger.use_crf
    metrics = json.loads((model / "metrics.json").read_text())
    assert metrics["finished"] and metrics["test"]["micro"]["support"] > 0
    assert set(metrics["corpus"]) == {"train", "dev", "test"}
    evaluated = CliRunner().invoke(cli, ["evaluate", str(model), str(corpus)])
    assert evaluated.exit_code == 0 and "micro avg" in evaluated.output


def test_unfetchable_embedding_names_the_way_out(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", sizes=(5, 2, 2))
    result = CliRunner().invoke(
        cli,
        [
            "train",
            str(corpus),
            "-o",
            str(tmp_path / "m"),
            "--preset",
            "seed",
            "--word-vectors",
            "glove",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 1
    assert "--word-vectors PATH" in result.output and "--preset offline" in result.output
    assert "Traceback" not in result.output


def test_offline_preset_learns_and_reloads_identically_in_a_fresh_process(tiny_model, tmp_path):
    from flair.models import SequenceTagger

    metrics = json.loads((tiny_model.parent / "metrics.json").read_text())
    assert metrics["test"]["micro"]["f1"] > 0.8  # chance is near 0 for exact spans
    embeddings = SequenceTagger.load(tiny_model).embeddings
    assert [type(e).__name__ for e in embeddings.embeddings] == [
        "WordEmbeddings",
        "CharacterEmbeddings",
    ]
    # the character alphabet comes from the training data, not Flair's downloadable one
    assert len(embeddings.embeddings[1].char_dictionary) < 80

    in_memory = _predict(SequenceTagger.load(tiny_model))
    assert any(in_memory)
    script = (
        "import json,sys; from tests.test_training import _predict;"
        "from flair.models import SequenceTagger;"
        f"print(json.dumps(_predict(SequenceTagger.load({str(tiny_model)!r}))))"
    )
    fresh = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[1],
    )
    assert json.loads(fresh.stdout.strip().splitlines()[-1]) == [
        [list(s) for s in sent] for sent in in_memory
    ]


def test_offline_vocabulary_comes_from_the_training_split_only(tiny_model, synthetic_corpus):
    from flair.models import SequenceTagger

    from annotator.training.recipes import normalise_word

    words = SequenceTagger.load(tiny_model).embeddings.embeddings[0].vocab
    train_words = {
        normalise_word(line.split()[0])
        for line in (synthetic_corpus / "train.txt").read_text().splitlines()
        if line.strip()
    }
    assert set(words) <= train_words


def test_dev_scores_track_a_fresh_evaluation(tiny_model, synthetic_corpus):
    """Flair's default embedding storage would freeze trainable embeddings at epoch 1 for dev."""
    from flair.models import SequenceTagger

    from annotator.corpus import load_corpus
    from annotator.evaluation import evaluate_tagger

    metrics = json.loads((tiny_model.parent / "metrics.json").read_text())
    final = SequenceTagger.load(tiny_model.parent / "final-model.pt")
    fresh = evaluate_tagger(final, load_corpus(synthetic_corpus).dev)
    assert metrics["epochs"][-1]["dev_f1"] == pytest.approx(fresh.micro.f1, abs=1e-6)
    assert len({round(e["dev_f1"], 6) for e in metrics["epochs"]}) > 1


def test_evaluate_equals_flairs_own_evaluation(tiny_model, synthetic_corpus, tmp_path):
    from flair.models import SequenceTagger

    from annotator.corpus import load_corpus

    tagger = SequenceTagger.load(tiny_model)
    flair_result = tagger.evaluate(list(load_corpus(synthetic_corpus).test), gold_label_type="ner")
    report = flair_result.classification_report
    out = tmp_path / "scores.json"
    result = CliRunner().invoke(
        cli, ["evaluate", str(tiny_model), str(synthetic_corpus), "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    scores = json.loads(out.read_text())
    assert scores["micro"]["f1"] == pytest.approx(report["micro avg"]["f1-score"])
    for label in ("PER", "ORG", "LOC"):
        assert scores["per_type"][label]["f1"] == pytest.approx(report[label]["f1-score"])
        assert f"{100 * report[label]['f1-score']:.2f}%" in result.output  # text: 64.00%
    assert 0 < scores["micro"]["f1"] <= 1  # data: fractions


def test_iob1_two_column_corpus_scores_right(tiny_model, tmp_path):
    """The same sentences as IOB1 `token TAG` files must score exactly as the BIO original."""
    bio = write_corpus(tmp_path / "bio", sizes=(5, 5, 30))
    iob1 = write_corpus(tmp_path / "iob1", sizes=(5, 5, 30), columns=2, scheme="iob1")
    runner = CliRunner()
    a = runner.invoke(
        cli, ["evaluate", str(tiny_model), str(bio), "--json", str(tmp_path / "a.json")]
    )
    b = runner.invoke(
        cli,
        [
            "evaluate",
            str(tiny_model),
            str(iob1),
            "--column-format",
            "text,ner",
            "--json",
            str(tmp_path / "b.json"),
        ],
    )
    assert a.exit_code == 0 and b.exit_code == 0, (a.output, b.output)
    a_scores, b_scores = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert a_scores == b_scores and a_scores["micro"]["f1"] > 0.8


def test_interrupted_run_resumes_from_its_checkpoint(synthetic_corpus, tmp_path):
    config = resolve_config(
        "offline",
        overrides={"max_epochs": 3, "hidden_size": 16, "word_embedding_dim": 16, "device": "cpu"},
    )

    def stop_after_first(output: Path) -> None:
        raise KeyboardInterrupt  # what Ctrl-C does; Flair's trainer catches it and stops

    first = train(synthetic_corpus, tmp_path / "run", config, on_epoch=stop_after_first)
    assert first.epochs == 1
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert not metrics.get("finished")
    with pytest.raises(AnnotatorError, match="--resume"):
        train(synthetic_corpus, tmp_path / "run", config)
    changed = resolve_config(
        "offline",
        overrides={"max_epochs": 3, "hidden_size": 32, "word_embedding_dim": 16, "device": "cpu"},
    )
    with pytest.raises(AnnotatorError, match="hidden_size"):
        train(synthetic_corpus, tmp_path / "run", changed, resume=True)
    result = CliRunner().invoke(
        cli, ["train", str(synthetic_corpus), "-o", str(tmp_path / "run"), "--resume"]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3] and metrics["finished"]


def test_train_with_dev_on_a_fixed_schedule(synthetic_corpus, tmp_path):
    """train + dev as training data (dev words join the vocabulary), no dev scores, the learning
    rate halved after the listed epochs, resumable, and the last epoch's model kept."""
    from flair.models import SequenceTagger

    from annotator.training.recipes import normalise_word

    toml = tmp_path / "with-dev.toml"
    toml.write_text(
        'preset = "offline"\ntrain_with_dev = true\nanneal_after = [1, 2]\nmax_epochs = 3\n'
        'hidden_size = 16\nword_embedding_dim = 16\nmin_word_freq = 2\ndevice = "cpu"\n'
    )
    config = resolve_config(None, toml)
    first = train(
        synthetic_corpus,
        tmp_path / "run",
        config,
        on_epoch=lambda output: (_ for _ in ()).throw(KeyboardInterrupt),
    )
    assert first.epochs == 1
    assert train(synthetic_corpus, tmp_path / "run", config, resume=True).finished
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [e["learning_rate"] for e in metrics["epochs"]] == [0.1, 0.05, 0.025]
    assert [e["dev_f1"] for e in metrics["epochs"]] == [None, None, None]
    assert metrics["best_epoch"] == 3 and metrics["finished"] and metrics["test"] is not None
    vocab = set(
        SequenceTagger.load(tmp_path / "run" / "best-model.pt").embeddings.embeddings[0].vocab
    )

    def counts(split: str) -> Counter:
        return Counter(
            normalise_word(line.split()[0])
            for line in (synthetic_corpus / f"{split}.txt").read_text().splitlines()
            if line.strip()
        )

    train_counts, dev_counts = counts("train"), counts("dev")
    # min_word_freq 2: words seen once in train make it only with their dev occurrences
    joined = {word for word, n in train_counts.items() if n == 1 and dev_counts[word]}
    assert joined and joined <= vocab
    assert {word for word, n in train_counts.items() if n == 1 and not dev_counts[word]}.isdisjoint(
        vocab
    )
    toml.write_text('anneal_after = [1, "2"]\n')
    with pytest.raises(AnnotatorError, match="anneal_after must be a list of integers"):
        resolve_config(None, toml)


def test_config_file_and_flags_override_the_preset(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('preset = "offline"\nhidden_size = 128\nlearning_rate = 0.05\n')
    config = resolve_config(None, toml, {"learning_rate": 0.2})
    assert (config.preset, config.hidden_size, config.learning_rate, config.batch_size) == (
        "offline",
        128,
        0.2,
        32,
    )
    assert resolve_config(None, None, None) == TrainConfig.for_preset("offline")
    toml.write_text("hiden_size = 3\n")
    with pytest.raises(AnnotatorError, match="unknown setting 'hiden_size'"):
        resolve_config(None, toml)
    with pytest.raises(AnnotatorError, match="needs retokenize = true"):
        resolve_config(None, None, {"keep_corpus_tokens": True})
    assert resolve_config(None, None, {"keep_corpus_tokens": True, "retokenize": True}).retokenize
    # the packaged model's recipe resolves as it is
    from annotator.models import DATA_DIR

    shipped = resolve_config(None, DATA_DIR / "default-model.toml")
    assert shipped.keep_corpus_tokens and shipped.line_breaks and shipped.glove_words == 150_000


def test_seed_preset_defaults_are_the_tutorials_recipe():
    config = TrainConfig.for_preset("seed")
    assert (config.word_vectors, config.flair_forward, config.flair_backward) == (
        "glove",
        "news-forward",
        "news-backward",
    )
    assert (
        config.hidden_size,
        config.use_crf,
        config.learning_rate,
        config.batch_size,
        config.max_epochs,
    ) == (256, True, 0.1, 32, 50)


def _tiny_bert(folder: Path) -> Path:
    """A randomly initialised 1-layer BERT with a word-level vocabulary, saved like a hub model."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from tests.synthetic import sentences

    words = sorted({token.lower() for s in sentences(200) for token, _ in s})
    folder.mkdir()
    (folder / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n"
    )
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(
        folder
    )
    config = BertConfig(
        vocab_size=len(words) + 5,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(folder)
    return folder


def test_transformer_preset_fine_tunes_a_local_encoder(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", sizes=(30, 10, 10))
    encoder = _tiny_bert(tmp_path / "bert")
    result = CliRunner().invoke(
        cli,
        [
            "train",
            str(corpus),
            "-o",
            str(tmp_path / "m"),
            "--preset",
            "transformer",
            "--transformer",
            str(encoder),
            "--max-epochs",
            "1",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    from flair.models import SequenceTagger

    tagger = SequenceTagger.load(tmp_path / "m" / "best-model.pt")
    assert type(tagger.embeddings).__name__ == "TransformerWordEmbeddings"
    assert tagger.embeddings.fine_tune and not tagger.use_rnn
    assert _predict(tagger) is not None


@pytest.mark.parametrize("progress", [True, False])
def test_train_progress_is_a_labelled_bar_or_one_line_per_epoch(
    synthetic_corpus, tmp_path, progress
):
    """No Flair bars (`0it [00:00, ?it/s]`) either way; the F1 convention in text and data."""
    (tmp_path / "tiny.toml").write_text(
        'hidden_size = 16\nword_embedding_dim = 16\nbatch_size = 64\ndevice = "cpu"\n'
    )
    args = ["train", str(synthetic_corpus), "-o", str(tmp_path / "run"), "--max-epochs", "2"]
    args += ["--config", str(tmp_path / "tiny.toml")]
    result = CliRunner().invoke(cli, [*args, "--progress" if progress else "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "0it [" not in result.stderr and "?it/s" not in result.stderr
    epoch_lines = [l for l in result.stderr.splitlines() if ": epoch " in l]
    assert len(epoch_lines) == 2 and "epoch 1/2: train loss" in epoch_lines[0]
    assert "%" in epoch_lines[0]  # dev P 12.34% ...
    assert ("epoch 1/2:" in result.stderr.replace("\r", "\n")) and (
        ("batch/s" in result.stderr or "s/batch" in result.stderr) == progress
    )
    assert "trained 2 epochs" in result.stdout and "%" in result.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert all(0 <= e["dev_f1"] <= 1 for e in metrics["epochs"])
    assert 0 <= metrics["test"]["micro"]["f1"] <= 1


def _with_dev_documents(folder: Path, every: int = 5) -> Path:
    """The synthetic corpus with its dev split cut into documents of `every` sentences, a first
    document that opens without -DOCSTART-, two -DOCSTART- lines in a row (one document, as
    `read_tagged_documents` counts them), a word only in document 0 and one only in document 1."""
    blocks = (folder / "dev.txt").read_text().strip().split("\n\n")[1:]  # drop its -DOCSTART-
    blocks[0] = "Zzkeptword NN O O\n" + blocks[0]
    blocks[every] = "Zzheldword NN O O\n" + blocks[every]
    out: list[str] = []
    for index, block in enumerate(blocks):
        if index and index % every == 0:
            out.append("-DOCSTART- -X- -X- O")
            if index == 2 * every:
                out.append("-DOCSTART- -X- -X- O")
        out.append(block)
    (folder / "dev.txt").write_text("\n\n".join(out) + "\n\n")
    return folder


def test_held_out_dev_documents_are_the_same_in_flair_and_in_the_file(tmp_path):
    from annotator.corpus import (
        document_numbers,
        held_out,
        load_corpus,
        read_tagged_documents,
    )

    corpus_dir = _with_dev_documents(write_corpus(tmp_path / "corpus"))
    documents = read_tagged_documents(corpus_dir / "dev.txt")
    assert len(documents) == 12 and [len(d) for d in documents] == [5] * 12
    dev = load_corpus(corpus_dir).dev
    sentences = [dev[index] for index in range(len(dev))]
    numbers = document_numbers(sentences)
    real = Counter(n for s, n in zip(sentences, numbers) if s[0].text != "-DOCSTART-")
    assert [real[n] for n in range(12)] == [5] * 12
    assert [n for n in range(12) if held_out(n, 0.25)] == [3, 7, 11]
    assert [n for n in range(12) if held_out(n, 0.5)] == [1, 3, 5, 7, 9, 11]
    assert sum(held_out(n, 0.2) for n in range(216)) == 43


def test_train_with_dev_holding_out_documents(tmp_path):
    """dev_holdout: the held-out documents score each epoch and stay out of the vocabulary; the
    model records the share, and evaluate (token level and raw) and calibrate use only them."""
    from flair.models import SequenceTagger

    from annotator.corpus import HOLDOUT_KEY, read_tagged_documents
    from annotator.evaluation import evaluate
    from annotator.raw_evaluation import calibrate, evaluate_raw

    corpus_dir = _with_dev_documents(write_corpus(tmp_path / "corpus"))
    toml = tmp_path / "holdout.toml"
    toml.write_text(
        'preset = "offline"\ntrain_with_dev = true\ndev_holdout = 0.5\nanneal_after = [3]\n'
        "max_epochs = 4\nlearning_rate = 0.2\nbatch_size = 16\nhidden_size = 32\n"
        'word_embedding_dim = 16\nmin_word_freq = 1\ndevice = "cpu"\n'
    )
    result = CliRunner().invoke(
        cli, ["train", str(corpus_dir), "--config", str(toml), "-o", str(tmp_path / "run")]
    )
    assert result.exit_code == 0, result.output
    assert "best held-out dev F1" in result.output and "best-model.pt" in result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert all(e["dev_f1"] is not None for e in metrics["epochs"])
    model = tmp_path / "run" / "best-model.pt"
    tagger = SequenceTagger.load(model)
    assert tagger.model_card[HOLDOUT_KEY] == 0.5
    vocab = set(tagger.embeddings.embeddings[0].vocab)
    assert "zzkeptword" in vocab and "zzheldword" not in vocab

    held = [d for n, d in enumerate(read_tagged_documents(corpus_dir / "dev.txt")) if n % 2]
    scored = evaluate(model, corpus_dir, "dev", device="cpu")
    assert scored.sentences == sum(len(d) for d in held) + len(held)  # with their -DOCSTART-
    assert scored.micro.support == sum(
        tag.startswith("B-") for d in held for s in d for _, tag in s
    )
    raw = evaluate_raw(model, corpus_dir, "dev", device="cpu")
    assert raw.documents == len(held) == 6
    assert raw.micro.support == scored.micro.support
    assert raw.micro.f1 > 0.5  # it has learnt something: calibrate has spans to fit
    calibrate(model, corpus_dir, tmp_path / "calibrated.pt", device="cpu", method="isotonic")
    card = SequenceTagger.load(tmp_path / "calibrated.pt").model_card
    calibration = card["annotator_calibration"]
    assert calibration["method"] == "isotonic"
    assert "(the documents held out of training)" in calibration["fitted_on"]
    assert calibration["spans"] == len(raw.scored)
    # a model trained without dev keeps the whole dev split
    assert evaluate_raw(model, corpus_dir, "test", device="cpu").documents == 1


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ("train_with_dev = true\ndev_holdout = 1.0\n", "dev_holdout must be"),
        ("dev_holdout = 0.25\n", "dev_holdout > 0 needs train_with_dev = true"),
    ],
)
def test_dev_holdout_settings_are_checked(tmp_path, settings, message):
    toml = tmp_path / "bad.toml"
    toml.write_text(settings)
    with pytest.raises(AnnotatorError, match=message):
        resolve_config(None, toml)
