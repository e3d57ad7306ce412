import io
import shutil
import urllib.error
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from annotator.cli import cli
from annotator.corpus import (
    CORPORA,
    HOLDOUT_KEY,
    check_column_format,
    corpus_stats,
    fetch_corpus,
    find_split_files,
    holds_out,
    load_corpus,
    parse_column_format,
    read_tagged_documents,
    training_files,
)
from annotator.errors import CorpusError
from tests.synthetic import write_corpus


def test_fetch_from_local_copy_verifies_and_is_idempotent(conllpp_dir, tmp_path):
    result = CliRunner().invoke(
        cli,
        ["corpus", "fetch", "conllpp", "--dest", str(tmp_path / "c"), "--from", str(conllpp_dir)],
    )
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert names == ["conllpp_dev.txt", "conllpp_test.txt", "conllpp_train.txt"]
    again = fetch_corpus("conllpp", tmp_path / "c", source=conllpp_dir, progress=False)
    assert len(again) == 3


def test_fetch_rejects_wrong_checksum_and_leaves_nothing(conllpp_dir, tmp_path):
    source = tmp_path / "src"
    shutil.copytree(conllpp_dir, source)
    (source / "conllpp_dev.txt").chmod(0o644)
    with open(source / "conllpp_dev.txt", "a") as handle:
        handle.write("tampered O\n")
    dest = tmp_path / "dest"
    result = CliRunner().invoke(
        cli, ["corpus", "fetch", "conllpp", "--dest", str(dest), "--from", str(source)]
    )
    assert result.exit_code == 1
    assert "sha256" in result.output and "Traceback" not in result.output
    assert not (dest / "conllpp_dev.txt").exists()
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]


class _Response(io.BytesIO):
    headers = {}


def test_download_path_streams_and_verifies(conllpp_dir, tmp_path):
    opened = []

    def opener(url):
        opened.append(url)
        name = url.rsplit("/", 1)[1]
        return _Response((conllpp_dir / name).read_bytes())

    fetch_corpus("conllpp", tmp_path, opener=opener, progress=False)
    assert [u.rsplit("/", 1)[1] for u in opened] == [f.name for f in CORPORA["conllpp"].files]
    assert all(
        u.startswith("https://raw.githubusercontent.com/ZihanWangKi/CrossWeigh/") for u in opened
    )


def test_network_failure_is_one_clear_message(tmp_path):
    def opener(url):
        raise urllib.error.URLError("Name or service not known")

    with pytest.raises(CorpusError, match="could not download .*--from DIR"):
        fetch_corpus("conllpp", tmp_path, opener=opener, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_unknown_corpus():
    result = CliRunner().invoke(cli, ["corpus", "fetch", "nope", "--dest", "x"])
    assert result.exit_code == 1 and "unknown corpus 'nope'" in result.output


def test_stats_of_conllpp_match_the_tutorial(conllpp_dir):
    result = CliRunner().invoke(cli, ["corpus", "stats", str(conllpp_dir)])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.output.splitlines()[1:4]}
    assert rows["Train"][1:3] == ["14987", "204567"]
    assert rows["Test"][1] == "3684" and rows["Development"][1] == "3466"
    assert "Warning" not in result.output


def test_stats_warn_when_counts_differ_from_the_paper(tmp_path):
    corpus = write_corpus(tmp_path / "c", sizes=(10, 5, 5))
    result = CliRunner().invoke(cli, ["corpus", "stats", str(corpus)])
    assert result.exit_code == 0
    assert "Warning: train: 11 sentences, but CoNLL-2003" in result.output


def test_iob1_and_two_column_files_read_as_spans(tmp_path):
    (tmp_path / "train.txt").write_text(
        "John I-PER\nSmith I-PER\nMary B-PER\nmet O\nSiemens I-ORG\nAG I-ORG\nin O\nParis I-LOC\n\n"
    )
    columns, tag = parse_column_format("text,ner")
    assert (columns, tag) == ({0: "text", 1: "ner"}, "ner")
    sentence = load_corpus(tmp_path, "text,ner").train[0]
    spans = [(s.text, s.get_label("ner").value) for s in sentence.get_spans("ner")]
    assert spans == [
        ("John Smith", "PER"),
        ("Mary", "PER"),
        ("Siemens AG", "ORG"),
        ("Paris", "LOC"),
    ]
    stats = corpus_stats(tmp_path, "text,ner")
    assert stats["train"].entities == {"PER": 2, "ORG": 1, "LOC": 1}


def test_a_labelled_sample_is_a_corpus_and_a_hash_token_stays_a_token(tmp_path):
    """One file, or a folder without a train file, can be evaluated or calibrated on; only
    training needs a train split. A `#` token is a token for Flair as for the raw texts."""
    sample = tmp_path / "sample.conll"
    sample.write_text("# O\n1 O\nfor O\nAcme B-ORG\n\nParis B-LOC\n", encoding="utf-8")
    assert find_split_files(sample) == {"dev": sample, "test": sample}
    corpus = load_corpus(sample, "text,ner")
    assert corpus.train is None and len(corpus.dev) == len(corpus.test) == 2
    assert [t.text for t in corpus.test[0]] == ["#", "1", "for", "Acme"]
    assert [t for t, _ in read_tagged_documents(sample, "text,ner")[0][0]] == [
        "#",
        "1",
        "for",
        "Acme",
    ]
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "dev.txt").write_text(sample.read_text(), encoding="utf-8")
    assert find_split_files(folder) == {"dev": folder / "dev.txt"}
    for where in (sample, folder):
        with pytest.raises(CorpusError, match="no training file"):
            training_files(where)
    with pytest.raises(CorpusError, match="no corpus file"):
        find_split_files(tmp_path)  # it holds sample.conll and a folder: no split's file


def test_only_a_corpus_folder_s_dev_is_reduced_to_held_out_documents(tmp_path):
    sample = tmp_path / "dev.txt"
    sample.write_text("Paris B-LOC\n", encoding="utf-8")
    held_out_model = SimpleNamespace(model_card={HOLDOUT_KEY: 0.25})
    # a sample of one's own (one file, or a folder without train) is scored whole
    assert not holds_out(sample, "dev", held_out_model)
    assert not holds_out(tmp_path, "dev", held_out_model)
    (tmp_path / "train.txt").write_text("Rome B-LOC\n", encoding="utf-8")
    assert holds_out(tmp_path, "dev", held_out_model)
    assert not holds_out(tmp_path, "test", held_out_model)
    assert not holds_out(tmp_path, "dev", SimpleNamespace(model_card={}))


def test_every_column_named_is_a_choice_and_a_file_not_utf8_is_one_line(tmp_path):
    """`token gold pred` (two tag columns, the gold first) is read by naming all three; a
    Latin-1 file is refused in one line by the end-to-end reader too."""
    scored = tmp_path / "scored.conll"
    scored.write_text("John B-PER O\nlives O O\nin O O\nParis B-LOC B-LOC\n", encoding="utf-8")
    check_column_format(scored, "text,ner,_")
    with pytest.raises(CorpusError, match="names 2 of them"):
        check_column_format(scored, "text,ner")
    latin = tmp_path / "latin.conll"
    latin.write_bytes("caf\xe9 B-LOC\n".encode("latin-1"))
    with pytest.raises(CorpusError, match="not UTF-8"):
        read_tagged_documents(latin, "text,ner")


def test_column_format_needs_text_and_tag():
    with pytest.raises(CorpusError):
        parse_column_format("pos,ner")
    with pytest.raises(CorpusError):
        parse_column_format("text,_")


@pytest.mark.parametrize(
    "lines, advice",
    [
        ("John B-PER\nSmith I-PER\nmet O\nParis B-LOC\n\n", "--column-format text,ner"),
        ("B-PER John\nI-PER Smith\nO met\n\n", "no column of IOB/BIO/BIOES tags"),
        # CoNLL's chunk column looks like tags too: three names for four columns is refused
        (
            "John NNP B-NP B-PER\nSmith NNP I-NP I-PER\nmet VBD B-VP O\n\n",
            "names 3 of them, and columns 3 and 4 hold tags; its tags are in columns 3 and 4: "
            "use --column-format text,_,_,ner (the last)",
        ),
    ],
)
def test_a_column_format_that_does_not_fit_is_one_line(tmp_path, lines, advice):
    corpus = tmp_path / "c"
    corpus.mkdir()
    for split in ("train", "dev", "test"):
        (corpus / f"{split}.txt").write_text(lines)
    for args in (
        ["corpus", "stats", str(corpus)],
        ["train", str(corpus), "-o", str(tmp_path / "run"), "--max-epochs", "1"],
    ):
        if "B-NP" in lines:
            args += ["--column-format", "text,pos,ner"]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output
        assert advice in result.output and "--column-format" in result.output
        assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # refused before its folder was made
