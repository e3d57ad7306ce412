"""--precision fp32|bf16|auto: bfloat16 matrix work where the hardware has it, float32
(exactly Flair's spans) elsewhere; bf16 asked for where it is not fast is a usage error."""

from __future__ import annotations

import logging

import pytest
import torch
from click.testing import CliRunner

from annotator.cli import cli
from annotator.errors import UsageError
from annotator.tagging import precision
from annotator.tagging.engines import make_engine
from annotator.tagging.precision import resolve_precision
from tests.test_fast_tagger import VARIANTS

pytestmark = pytest.mark.usefixtures("single_thread")
CPU = torch.device("cpu")


@pytest.fixture
def no_bf16(monkeypatch):
    """A CPU without bfloat16 units (the capability probe says so)."""
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"sse2", "avx2"}))
    monkeypatch.setattr(precision, "_said", set())


@pytest.fixture
def with_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))


def test_without_bf16_auto_falls_back_once_and_bf16_is_refused(no_bf16, caplog):
    with caplog.at_level(logging.WARNING, logger="annotator"):
        assert resolve_precision("auto", CPU) is None
        assert resolve_precision("auto", CPU) is None
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 1 and "float32" in notes[0] and "AVX512-BF16" in notes[0]
    with pytest.raises(UsageError, match="--precision bf16: this CPU has neither AMX"):
        resolve_precision("bf16", CPU)
    assert resolve_precision("fp32", CPU) is None


def test_bf16_refused_by_the_cli_before_the_model_loads(
    no_bf16, tiny_model, synthetic_corpus, monkeypatch
):
    import annotator.models as models

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model loaded before the precision was checked")

    monkeypatch.setattr(models, "load_model", must_not_load)
    monkeypatch.setattr(models, "load_tagger", must_not_load)
    result = CliRunner().invoke(
        cli,
        ["evaluate", str(tiny_model), str(synthetic_corpus), "--raw", "--precision", "bf16"],
    )
    assert result.exit_code == 2, result.output
    assert "AVX512-BF16" in result.output and "Traceback" not in result.output


def test_bf16_runs_the_matrix_work_in_bfloat16_and_keeps_the_spans(with_bf16, tiny_model):
    """On a tagger that really finds entities: bf16 emissions differ from fp32's by rounding
    only, and the spans stay (this small model's, on these sentences)."""
    from annotator.models import load_model

    sentences = [
        "Anna Berg works for Acme Corp in Paris .".split(),
        "Bob Stone visited Oslo with Clara Lind of Nordic Bank .".split(),
    ] * 3
    tagger = load_model(tiny_model, device="cpu", engine="fast")
    exact = make_engine(tagger, device=CPU, precision="fp32")
    fast = make_engine(tagger, device=CPU, precision="bf16")
    assert exact.autocast_dtype is None and fast.autocast_dtype is torch.bfloat16
    # auto: float32 for a model without a character LM (bfloat16 gains nothing there)
    assert make_engine(tagger, device=CPU, precision="auto").autocast_dtype is None
    with_lm = VARIANTS["flair fwd/bwd(lower, no whitespace, chunked)+word crf"]()
    assert make_engine(with_lm, device=CPU, precision="auto").autocast_dtype is torch.bfloat16
    reference, rounded = exact.emissions(sentences), fast.emissions(sentences)
    assert not torch.equal(reference, rounded)  # it did run in bfloat16
    assert torch.allclose(reference, rounded, atol=0.25, rtol=0.05)
    found = exact.predict(sentences)
    assert any(found)
    assert [[s[:3] for s in spans] for spans in fast.predict(sentences)] == [
        [s[:3] for s in spans] for spans in found
    ]


def test_annotate_refuses_bf16_in_one_line_before_loading(no_bf16, tmp_path, monkeypatch):
    import annotator.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("a model loaded"))
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": 1, "text": "Angela Merkel visited Paris."}\n')
    result = CliRunner().invoke(
        cli, ["annotate", str(source), "-o", str(tmp_path / "o.jsonl"), "--precision", "bf16"]
    )
    assert result.exit_code == 2, result.output
    assert "--precision bf16: this CPU has neither AMX" in result.output
    assert not (tmp_path / "o.jsonl").exists()
