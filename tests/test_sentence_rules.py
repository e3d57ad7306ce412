"""Sentence rules chosen per model: list markers, and the settings a model carries to annotate."""

from __future__ import annotations

from annotator.segmentation import CARD_KEY, Segmenter, segmentation_card, segmenter_settings

RESULTS = "1. Jesper Ronnback ( Sweden ) 25.76\n2. Peter Pan ( Norway ) 26.01\nHe won. 3. Then"


def _sentences(segmenter: Segmenter, text: str) -> list[str]:
    return [" ".join(s.tokens) for s in next(segmenter.split([text]))]


def test_sentencizer_alone_cuts_after_list_numbers():
    assert _sentences(Segmenter(), RESULTS)[:2] == ["1 .", "Jesper Ronnback ( Sweden ) 25.76 2 ."]


def test_list_markers_begin_their_item_at_line_starts_only():
    assert _sentences(Segmenter(list_markers=True), RESULTS) == [
        "1 . Jesper Ronnback ( Sweden ) 25.76",
        "2 . Peter Pan ( Norway ) 26.01 He won .",
        "3 .",
        "Then",
    ]
    # a year or a four-digit number ending a line is no list marker
    assert _sentences(Segmenter(list_markers=True), "It was 1996.\n2000. That was then.") == [
        "It was 1996 .",
        "2000 .",
        "That was then .",
    ]


NEWS = (
    "SOCCER - JAPAN GET LUCKY WIN , CHINA IN SURPRISE DEFEAT .\n"
    "Nadim Ladki\n"
    "AL-AIN , United Arab Emirates 1996-12-06\n"
    "Japan began the defence of their Asian Cup title with a lucky 2-1 win against Syria in a\n"
    "Group C championship match on Friday , their first of the tournament , before 10,000 .\n"
    "THE WINNERS OF THE CUP WILL PLAY IN THE WORLD CUP FINALS NEXT SUMMER IN FRANCE\n"
    "Japan 3 1 2 0 5 3 5"
)


def test_line_breaks_end_headings_datelines_and_rows_but_not_wrapped_prose():
    assert _sentences(Segmenter(), NEWS)[1].startswith("Nadim Ladki AL - AIN")
    assert _sentences(Segmenter(line_breaks=True), NEWS) == [
        "SOCCER - JAPAN GET LUCKY WIN , CHINA IN SURPRISE DEFEAT .",
        "Nadim Ladki",
        "AL - AIN , United Arab Emirates 1996 - 12 - 06",
        "Japan began the defence of their Asian Cup title with a lucky 2 - 1 win against Syria "
        "in a Group C championship match on Friday , their first of the tournament , "
        "before 10,000 .",
        "THE WINNERS OF THE CUP WILL PLAY IN THE WORLD CUP FINALS NEXT SUMMER IN FRANCE",
        "Japan 3 1 2 0 5 3 5",
    ]
    # a long all-caps line is a heading; a blank line ends a sentence, a trailing one adds nothing
    assert _sentences(Segmenter(line_breaks=True), "\n\nBy John Smith\n\nHe left.\n") == [
        "By John Smith",
        "He left .",
    ]


def test_line_breaks_leave_narrow_columns_whole():
    """Short is relative to the text's lines: a narrow newspaper column is prose, not rows."""
    column = (
        "The talks in Geneva between\nPresident Boris Yeltsin and\nthe leaders of Chechnya "
        "ended\non Friday without agreement .\nBoth sides said they would\nmeet again soon ."
    )
    assert len(_sentences(Segmenter(line_breaks=True), column)) == 2


def test_offsets_stay_exact_with_the_rules():
    for text in (RESULTS, NEWS):
        (sentences,) = Segmenter(list_markers=True, line_breaks=True).split([text])
        for sentence in sentences:
            for token, start, end in zip(sentence.tokens, sentence.starts, sentence.ends):
                assert text[start:end] == token


class _Tagger:
    def __init__(self, card):
        self.model_card = card


def test_models_carry_their_segmenter_settings(caplog):
    assert segmenter_settings(_Tagger(None)) == {}
    assert segmenter_settings(_Tagger(segmentation_card(retokenized=True))) == {}
    assert segmenter_settings(_Tagger(segmentation_card(True, list_markers=True))) == {
        "list_markers": True
    }
    assert segmenter_settings(_Tagger(segmentation_card(False, True, line_breaks=True))) == {
        "list_markers": True,
        "line_breaks": True,
    }
    old = segmentation_card(True)
    old[CARD_KEY]["spacy_version"] = "3.0.0"
    with caplog.at_level("WARNING", logger="annotator"):
        segmenter_settings(_Tagger(old))
    assert "spaCy 3.0.0" in caplog.text


def test_annotator_splits_as_the_model_says(tiny_model, tmp_path, single_thread):
    from annotator.models import load_tagger
    from annotator.pipeline import Annotator
    from annotator.records import Document

    tagger = load_tagger(tiny_model, device="cpu")
    rules = segmentation_card(True, list_markers=True, line_breaks=True)
    tagger.model_card = {**(tagger.model_card or {}), **rules}
    tagger.save(tmp_path / "rules.pt")
    document = Document("d", NEWS, "", 0)
    for model, sentences in ((tmp_path / "rules.pt", 6), (tiny_model, 3)):
        for split_process in (False, True):
            annotator = Annotator(str(model), device="cpu", split_process=split_process)
            (result,) = annotator.annotate_documents([document])
            assert result.sentences == sentences
            assert ("list markers" in annotator.segmenter.name) == (sentences == 6)
            assert ("line breaks" in annotator.segmenter.name) == (sentences == 6)
            if annotator.splitter is not None:
                annotator.splitter.close()


def test_training_records_the_settings_in_the_model(synthetic_corpus, tmp_path, single_thread):
    from annotator.models import load_tagger
    from annotator.training.config import resolve_config
    from annotator.training.train import train

    config = resolve_config(
        "offline",
        overrides={
            "max_epochs": 1,
            "hidden_size": 8,
            "word_embedding_dim": 8,
            "device": "cpu",
            "retokenize": True,
            "list_markers": True,
        },
    )
    train(synthetic_corpus, tmp_path / "m", config)
    tagger = load_tagger(tmp_path / "m" / "best-model.pt", device="cpu")
    assert tagger.model_card[CARD_KEY]["retokenized"] is True
    assert segmenter_settings(tagger) == {"list_markers": True}
