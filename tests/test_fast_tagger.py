"""FastSequenceTagger must reproduce flair's SequenceTagger.predict exactly (scores to 1e-4).

Everything is built in-process from tiny random taggers: no downloads, no files except tmp_path.
"""

from __future__ import annotations

import functools
import random

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

flair = pytest.importorskip("flair")

from flair.data import Dictionary, Sentence  # noqa: E402
from flair.embeddings import (  # noqa: E402
    CharacterEmbeddings,
    FlairEmbeddings,
    HashEmbeddings,
    OneHotEmbeddings,
    StackedEmbeddings,
    WordEmbeddings,
)
from flair.models import LanguageModel, SequenceTagger  # noqa: E402

from annotator.tagging.components import CharComponent
from annotator.tagging.fast import FastSequenceTagger
from annotator.tagging.packed import eval_mode

LABEL = "ner"
WORDS = [
    "the", "The", "a", "of", "Berlin", "berlin", "Paris", "John", "Smith", "Mary", "said", "in",
    "on", "2019", "1999", "3.14", "#", "0", "x", "xx", "AB", "ab", "ba", "Mr.", "co-op", ",", ".",
    "!",
]  # fmt: skip
# words whose characters are not all in the char dictionary / words not in the word vocab
ODD_WORDS = ["café", "naïve", "Ünknown", "ß", "日本", "zzz", "qwerty", "42", "A1b2", "é", "è"]
VOCAB_WORDS = [
    "the",
    "a",
    "of",
    "berlin",
    "paris",
    "john",
    "smith",
    "said",
    "in",
    "####",
    "0",
    "x",
    "ab",
    ",",
    ".",
]


pytestmark = pytest.mark.usefixtures("single_thread")


def _char_dictionary() -> Dictionary:
    chars = Dictionary(add_unk=True)
    for word in WORDS:
        for char in word:
            chars.add_item(char)
    return chars


def _word_embeddings(dim: int = 12, stable: bool = False) -> WordEmbeddings:
    vocab = {w: i for i, w in enumerate(VOCAB_WORDS)}
    emb = WordEmbeddings(None, vocab=vocab, embedding_length=dim, fine_tune=True, stable=stable)
    torch.nn.init.normal_(emb.embedding.weight)
    return emb


def _one_hot(field: str = "text") -> OneHotEmbeddings:
    vocab = Dictionary(
        add_unk=True
    )  # what OneHotEmbeddings.from_corpus builds: frequent words + <unk>
    for word in WORDS[:12]:
        vocab.add_item(word)
    return OneHotEmbeddings(vocab, field=field, embedding_length=6)


def _tiny_lm(forward: bool) -> LanguageModel:
    chars = Dictionary(add_unk=True)
    for char in " \n" + "".join(WORDS).lower():
        chars.add_item(char)
    return LanguageModel(
        chars, is_forward_lm=forward, hidden_size=16, nlayers=1, embedding_size=8, has_decoder=False
    )


def _span_dictionary() -> Dictionary:
    tags = Dictionary(add_unk=False)
    for label in ["PER", "LOC", "ORG"]:
        tags.add_item(label)
    tags.span_labels = True
    return tags


def _tagger(
    embeddings, tag_dictionary: Dictionary | None = None, seed: int = 0, **kwargs
) -> SequenceTagger:
    """A random tagger, its output layer scaled up and its "O" bias set so that about half the
    tokens are O."""
    torch.manual_seed(seed)
    tagger = SequenceTagger(
        StackedEmbeddings(embeddings) if isinstance(embeddings, list) else embeddings,
        tag_dictionary or _span_dictionary(),
        LABEL,
        hidden_size=kwargs.pop("hidden_size", 10),
        **kwargs,
    )
    tagger.eval()
    with torch.no_grad():
        tagger.linear.weight.mul_(4.0)
        tagger.linear.bias.normal_()
        if tagger.use_crf:
            tagger.crf.transitions.mul_(0.3)
        outside = tagger.label_dictionary.get_idx_for_item("O")
        calibrate = FastSequenceTagger.unsupported_reason(tagger) is None
        if calibrate and tagger.label_dictionary.get_item_for_index(outside) == "O":
            emissions = FastSequenceTagger(tagger).emissions(_sentences(20, seed=99))
            others = torch.cat([emissions[:, :outside], emissions[:, outside + 1 :]], dim=1)
            tagger.linear.bias[outside] += (
                others.max(dim=1).values - emissions[:, outside]
            ).median()
    return tagger


def _sentences(n: int, seed: int) -> list[list[str]]:
    """Mixed lengths, repeated tokens, unknown words/characters, digits, single tokens."""
    rng = random.Random(seed)
    pool = WORDS * 3 + ODD_WORDS
    out = [
        [rng.choice(pool) for _ in range(rng.choice([1, 2, 3, 5, 8, 13, 21, 40, 60]))]
        for _ in range(n)
    ]
    out += [
        ["the"],
        ["the", "the"],
        ["ab", "x", "ab", "Berlin", "ab"],
        ["é", "è", "é"],
        ["2019", "1999", "2019"],
    ]
    out += [["Berlin"] * 7, ["John", "Smith", "said", "John", "Smith", "said", "Mr.", "Smith"] * 4]
    return out


def flair_predictions(
    tagger: SequenceTagger, sentences: list[list[str]], spans: bool = True
) -> list[list]:
    flair_sentences = [Sentence(s) for s in sentences]
    tagger.predict(flair_sentences, mini_batch_size=32)
    result = []
    for sentence in flair_sentences:
        # token.idx is 1-based; spans become (first, end_exclusive, label, score)
        if spans:
            labelled = [
                (s[0].idx - 1, s[-1].idx, s.get_label(LABEL)) for s in sentence.get_spans(LABEL)
            ]
        else:
            labelled = [
                (t.idx - 1, t.idx, t.get_label(LABEL)) for t in sentence if t.has_label(LABEL)
            ]
        result.append([(start, end, label.value, label.score) for start, end, label in labelled])
    return result


def assert_same(expected: list[list], actual: list[list]) -> None:
    assert len(expected) == len(actual)
    for i, (exp, act) in enumerate(zip(expected, actual)):
        assert [e[:3] for e in exp] == [a[:3] for a in act], f"sentence {i}"
        assert np.allclose([e[3] for e in exp], [a[3] for a in act], atol=1e-4, rtol=0), (
            f"sentence {i}"
        )


VARIANTS = {
    "word+char bilstm crf": lambda: _tagger(
        [_word_embeddings(), CharacterEmbeddings(_char_dictionary(), 8, 6)]
    ),
    "word+char bilstm softmax": lambda: _tagger(
        [_word_embeddings(), CharacterEmbeddings(_char_dictionary(), 8, 6)], use_crf=False
    ),
    "word(stable)+char+onehot 2-layer unidirectional crf, no reprojection, BIO": lambda: _tagger(
        [_word_embeddings(stable=True), CharacterEmbeddings(_char_dictionary(), 8, 6), _one_hot()],
        rnn_layers=2,
        bidirectional=False,
        reproject_embeddings=False,
        tag_format="BIO",
    ),
    "onehot+char gru crf": lambda: _tagger(
        [_one_hot(), CharacterEmbeddings(_char_dictionary(), 5, 4)], rnn_type="GRU"
    ),
    "single char embedding, no rnn, softmax": lambda: _tagger(
        CharacterEmbeddings(_char_dictionary(), 8, 6), use_rnn=False, use_crf=False
    ),
    "flair fwd/bwd(lower, no whitespace, chunked)+word crf": lambda: _tagger(
        [
            FlairEmbeddings(_tiny_lm(True)),
            FlairEmbeddings(
                _tiny_lm(False), with_whitespace=False, is_lower=True, chars_per_chunk=16
            ),
            _word_embeddings(),
        ]
    ),
    # 11 stacked embeddings: flair concatenates by *sorted* name, so "10-..." comes before "2-..."
    "11 embeddings (name sort order)": lambda: _tagger(
        [_word_embeddings(3) for _ in range(6)] + [_one_hot() for _ in range(5)]
    ),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def tagger(request) -> SequenceTagger:
    return VARIANTS[request.param]()


@pytest.fixture(scope="module")
def sentences() -> list[list[str]]:
    return _sentences(120, seed=1)


def test_matches_flair_predict(tagger: SequenceTagger, sentences: list[list[str]]) -> None:
    fast = FastSequenceTagger(tagger)
    assert fast.label_type == LABEL
    expected = flair_predictions(tagger, sentences)
    covered = sum(end - start for spans in expected for start, end, _, _ in spans)
    assert 0 < covered < sum(map(len, sentences)), (
        "the random tagger should predict some (not only) spans"
    )
    assert_same(expected, fast.predict(sentences))
    # a second call (warm word-type and char caches) and small token budgets give the same result
    assert_same(expected, fast.predict(sentences))
    small_batches = FastSequenceTagger(tagger, max_tokens_per_batch=50)
    assert_same(expected, small_batches.predict(sentences))


def test_save_and_load(tmp_path, sentences: list[list[str]]) -> None:
    # (flair 0.15.1 does not save `bidirectional`, so only bidirectional taggers survive save+load)
    tagger = _tagger(
        [_word_embeddings(stable=True), CharacterEmbeddings(_char_dictionary(), 8, 6), _one_hot()],
        rnn_layers=2,
        reproject_embeddings=False,
        tag_format="BIO",
    )
    before = FastSequenceTagger(tagger).predict(sentences)
    tagger.save(tmp_path / "tagger.pt")
    loaded = SequenceTagger.load(tmp_path / "tagger.pt")
    fast = FastSequenceTagger(loaded)
    after = fast.predict(sentences)
    assert_same(before, after)
    assert_same(flair_predictions(loaded, sentences), after)


def test_char_duplicate_quirk_matches_flair_embeddings() -> None:
    """Earlier duplicates get the char embedding of the token at their index in the length-sorted
    order."""
    char_emb = CharacterEmbeddings(_char_dictionary(), 8, 6).eval()
    words = ["ab", "x", "ab", "Berlin", "ab", "é", "è", "co-op", "x"]  # "é"/"è" are both [<unk>]
    component = CharComponent(
        char_emb.name, 16, char_emb.char_dictionary, char_emb.char_embedding, char_emb.char_rnn
    )
    cids = np.array([component.type_values(w)[0] for w in words])
    lengths = np.array([len(w) for w in words])
    src = component.source_sequences(cids, lengths, np.zeros(len(words), dtype=np.int64))
    by_length = sorted(range(len(words)), key=lambda i: -len(words[i]))  # stable, descending
    last = {c: i for i, c in enumerate(cids)}
    assert src.tolist() == [c if last[c] == i else cids[by_length[i]] for i, c in enumerate(cids)]
    assert src.tolist() != cids.tolist()

    sentence = Sentence(words)
    with torch.no_grad():
        char_emb.embed(sentence)
        flair_vectors = torch.stack([token.get_embedding() for token in sentence])
    tagger = _tagger(char_emb, use_rnn=False)
    fast = FastSequenceTagger(tagger)
    with torch.inference_mode():
        ours = fast.embed_flat(fast.prepare([words]))
    assert torch.allclose(flair_vectors, ours, atol=1e-6)


def test_token_level_tagger() -> None:
    """Non-span tag dictionaries: one (i, i+1, tag, score) per token not tagged O/_ (flair's token
    labels)."""
    tags = Dictionary(add_unk=False)
    for tag in ["O", "NN", "VB", "DT", "_"]:
        tags.add_item(tag)
    tagger = _tagger(
        [_word_embeddings(), CharacterEmbeddings(_char_dictionary(), 8, 6)], tag_dictionary=tags
    )
    sentences = _sentences(40, seed=3)
    expected = flair_predictions(tagger, sentences, spans=False)
    assert sum(map(len, expected)) > 0
    assert_same(expected, FastSequenceTagger(tagger).predict(sentences))


def test_emissions_match_flair_features() -> None:
    tagger = VARIANTS["word+char bilstm softmax"]()
    sentences = sorted(_sentences(30, seed=4), key=len, reverse=True)
    with torch.no_grad():
        flair_sentences = [Sentence(s) for s in sentences]
        features = tagger.forward(
            *tagger._prepare_tensors(flair_sentences)
        )  # [tokens, tags], sorted order
    ours = FastSequenceTagger(tagger).emissions(sentences)
    assert ours.shape == (sum(map(len, sentences)), len(tagger.label_dictionary))
    assert torch.allclose(features, ours, atol=1e-5)


@pytest.mark.parametrize(
    "variant, distinct",
    [
        ("word+char bilstm crf", True),
        ("word(stable)+char+onehot 2-layer unidirectional crf, no reprojection, BIO", True),
        ("onehot+char gru crf", False),
        ("flair fwd/bwd(lower, no whitespace, chunked)+word crf", False),
    ],
)
def test_distinct_rows_path(variant: str, distinct: bool) -> None:
    """On the CPU, LSTM taggers run the step-by-step kernel, and non-contextual ones project
    each distinct input row once; emissions equal those of the tagger's own modules run over
    every token."""
    tagger = VARIANTS[variant]()
    fast = FastSequenceTagger(tagger)
    sentences = sorted(_sentences(40, seed=6), key=len, reverse=True)
    with torch.inference_mode(), eval_mode(tagger):
        batch = fast.prepare(sentences)
        assert (batch.row_keys is not None) is distinct
        if not fast._own_lstm:  # a GRU: the tagger's own module
            return
        if distinct:
            rows = np.unique(batch.row_keys).size
            assert rows < batch.num_tokens  # the sample repeats words
        ours = fast.forward_packed(batch)
        fast._own_lstm = False  # the tagger's own modules over every token
        reference = fast.forward_packed(batch)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_empty_inputs_and_empty_tokens() -> None:
    tagger = VARIANTS["word+char bilstm crf"]()
    fast = FastSequenceTagger(tagger)
    assert fast.predict([]) == []
    assert fast.predict([[]]) == [[]]
    assert fast.predict([[""], []]) == [[], []]
    assert fast.emissions([]).shape == (0, len(tagger.label_dictionary))

    # flair's Sentence drops empty tokens; spans are reported in the caller's token positions
    sentences = _sentences(30, seed=5)
    with_gaps = [[w for word in s for w in ("", word)] + [""] for s in sentences]
    expected = [
        [(2 * a + 1, 2 * b, label, score) for a, b, label, score in spans]
        for spans in fast.predict(sentences)
    ]
    assert_same(expected, fast.predict([[], *with_gaps, []])[1:-1])


def test_device_and_autocast_options() -> None:
    tagger = VARIANTS["word+char bilstm crf"]()
    sentences = _sentences(20, seed=8)
    expected = flair_predictions(tagger, sentences)
    assert_same(expected, FastSequenceTagger(tagger, device="cpu").predict(sentences))
    # opt-in reduced precision: runs and keeps the output structure (values may differ from flair)
    approx = FastSequenceTagger(tagger, device=torch.device("cpu"), autocast_dtype=torch.bfloat16)
    predictions = approx.predict(sentences)
    assert len(predictions) == len(sentences)
    assert all(
        0 <= a < b <= len(s) for spans, s in zip(predictions, sentences) for a, b, _, _ in spans
    )


def test_training_mode_and_weight_updates() -> None:
    """Predictions use eval mode without changing the caller's flags, and follow weight updates
    (char cache)."""
    tagger = VARIANTS["word+char bilstm crf"]()
    fast = FastSequenceTagger(tagger)
    sentences = _sentences(40, seed=6)
    fast.predict(sentences)  # fills the char-encoding cache

    rng = random.Random(0)
    train = []
    for words in _sentences(24, seed=7):
        sentence = Sentence(words)
        start = rng.randrange(len(sentence))
        sentence[start : start + 1].add_label(LABEL, rng.choice(["PER", "LOC", "ORG"]))
        train.append(sentence)
    optimizer = torch.optim.SGD(tagger.parameters(), lr=0.5)
    tagger.train()
    for _epoch in range(2):
        for i in range(0, len(train), 8):
            batch = train[i : i + 8]
            loss, _ = tagger.forward_loss(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            for sentence in batch:
                sentence.clear_embeddings()

    # still in train mode: fast predictions are the eval-mode ones and the flags are left alone
    ours = fast.predict(sentences)
    assert tagger.training and tagger.rnn.training
    tagger.eval()
    assert_same(flair_predictions(tagger, sentences), ours)


def test_unsupported_embeddings() -> None:
    tagger = _tagger([_word_embeddings(), HashEmbeddings(num_embeddings=50, embedding_length=4)])
    reason = FastSequenceTagger.unsupported_reason(tagger)
    assert reason is not None and "HashEmbeddings" in reason
    with pytest.raises(ValueError, match="HashEmbeddings"):
        FastSequenceTagger(tagger)

    pos_onehot = _tagger([_word_embeddings(), _one_hot(field="pos")])
    assert "field" in FastSequenceTagger.unsupported_reason(pos_onehot)
    assert FastSequenceTagger.unsupported_reason(object()) is not None  # type: ignore[arg-type]
    for build in VARIANTS.values():
        assert FastSequenceTagger.unsupported_reason(build()) is None


_token = st.one_of(
    st.sampled_from(WORDS + ODD_WORDS), st.text(alphabet="aAbB1é-.", min_size=1, max_size=6)
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.lists(_token, min_size=0, max_size=12), min_size=0, max_size=6))
def test_property_matches_flair(batch: list[list[str]]) -> None:
    fast = _property_engine()
    assert_same(flair_predictions(fast.tagger, batch), fast.predict(batch))


@functools.lru_cache(maxsize=1)
def _property_engine() -> FastSequenceTagger:
    return FastSequenceTagger(VARIANTS["word+char bilstm crf"]())


def _benchmark(threads: int = 1, n_sentences: int = 2000) -> None:
    """Speed vs flair: word(100d) + char(25/25) BiLSTM-CRF, hidden 256, sentences of 20-40
    tokens."""
    import string
    import time

    torch.set_num_threads(threads)
    rng, np_rng = random.Random(0), np.random.default_rng(0)
    letters = string.ascii_letters + string.digits + "-.'"
    types = sorted(
        {"".join(rng.choice(letters) for _ in range(rng.randint(1, 12))) for _ in range(30000)}
    )
    rng.shuffle(types)
    zipf = 1.0 / np.arange(1, len(types) + 1)
    sentences = [
        [types[i] for i in np_rng.choice(len(types), size=rng.randint(20, 40), p=zipf / zipf.sum())]
        for _ in range(n_sentences)
    ]
    chars = Dictionary(add_unk=True)
    for char in letters:
        chars.add_item(char)
    words = WordEmbeddings(
        None, vocab={w: i for i, w in enumerate(types[:20000])}, embedding_length=100
    )
    torch.nn.init.normal_(words.embedding.weight)
    tags = Dictionary(add_unk=False)
    for label in ["PER", "LOC", "ORG", "MISC"]:
        tags.add_item(label)
    tags.span_labels = True
    torch.manual_seed(0)
    tagger = SequenceTagger(
        StackedEmbeddings([words, CharacterEmbeddings(chars)]), tags, LABEL, hidden_size=256
    )
    tagger.eval()
    with torch.no_grad():  # mostly "O", as in real text
        tagger.linear.bias[tagger.label_dictionary.get_idx_for_item("O")] += 2.0

    def best_of(n: int, run) -> float:
        times = []
        for _ in range(n):
            flair_sentences = [Sentence(s) for s in sentences]  # not timed
            start = time.perf_counter()
            run(flair_sentences)
            times.append(time.perf_counter() - start)
        return min(times)

    fast = FastSequenceTagger(tagger)
    fast.predict(sentences[:50])
    t_flair = best_of(2, lambda fs: tagger.predict(fs, mini_batch_size=32))
    t_fast = best_of(3, lambda fs: fast.predict(sentences))
    t_cold = best_of(3, lambda fs: FastSequenceTagger(tagger).predict(sentences))
    t_emissions = best_of(3, lambda fs: fast.emissions(sentences))
    n_tokens = sum(map(len, sentences))
    print(f"{n_sentences} sentences, {n_tokens} tokens, torch threads={threads}")
    print(f"flair predict(mini_batch_size=32): {t_flair:.2f}s  {n_tokens / t_flair:,.0f} tok/s")
    print(
        f"fast predict:                      {t_fast:.2f}s  {n_tokens / t_fast:,.0f} tok/s  "
        f"x{t_flair / t_fast:.1f}"
    )
    print(f"fast predict, fresh engine:        {t_cold:.2f}s  x{t_flair / t_cold:.1f}")
    print(f"fast emissions only:               {t_emissions:.2f}s")


if __name__ == "__main__":  # manual benchmark: python tests/test_fast_tagger.py [threads]
    import sys

    _benchmark(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
