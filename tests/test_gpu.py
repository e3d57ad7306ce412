"""The GPU paths on a GPU: the fast engine, the fast trainer (float32 and bfloat16) and
`--devices`, each held to Flair on the same GPU or to the CPU run.

Marked `gpu` and skipped where torch sees no CUDA device; `scripts/gpu-check.sh` runs them on a
lent GPU machine (`pytest -m gpu tests/test_gpu.py`). Flair and the helpers of the CPU tests are
imported inside the tests, so that collecting this module costs nothing where it is skipped.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]
CUDA = "cuda:0"


@pytest.fixture
def on_cuda(monkeypatch):
    """Flair's own code on the GPU, and float32 without TF32 on both sides, so that Flair and the
    fast paths are held to the tolerances of the CPU tests."""
    import flair

    monkeypatch.setattr(flair, "device", torch.device(CUDA))
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture
def corpus(tmp_path):
    from annotator.corpus import load_corpus
    from tests.synthetic import write_corpus

    return load_corpus(write_corpus(tmp_path / "corpus"))


def test_fast_engine_on_cuda_gives_flairs_spans_on_cuda(on_cuda):
    from annotator.tagging.fast import FastSequenceTagger
    from tests.test_fast_tagger import VARIANTS, _sentences, assert_same, flair_predictions

    sentences = _sentences(120, seed=1)
    for name, build in VARIANTS.items():
        tagger = build().to(CUDA)
        expected = flair_predictions(tagger, sentences)
        assert any(expected), name
        fast = FastSequenceTagger(tagger, device=CUDA)
        assert fast.device.type == "cuda"
        assert_same(expected, fast.predict(sentences))
        assert_same(
            expected,
            FastSequenceTagger(tagger, device=CUDA, max_tokens_per_batch=50).predict(sentences),
        )


def test_packaged_model_on_cuda_gives_flairs_spans_and_bf16_nearly_so(on_cuda):
    """The real model: the engine `annotate` uses on a GPU is Flair's predict, span for span."""
    from annotator.models import load_tagger
    from annotator.tagging.engines import make_engine
    from annotator.tagging.fast import FastSequenceTagger
    from tests.synthetic import sentences as synthetic
    from tests.test_fast_tagger import assert_same, flair_predictions

    tagger = load_tagger(None, device=CUDA)
    sentences = [[token for token, _ in pairs] for pairs in synthetic(400, seed=5)]
    expected = flair_predictions(tagger, sentences)
    assert sum(map(len, expected)) > 400
    engine = make_engine(tagger, device=torch.device(CUDA), span_scores="flair")
    assert engine.name == "fast"
    assert_same(expected, engine.predict(sentences))
    # scored as annotate scores them (calibrated where the model has a map): the same spans
    scored = make_engine(tagger, device=torch.device(CUDA)).predict(sentences)
    assert [[s[:3] for s in a] for a in scored] == [[s[:3] for s in e] for e in expected]
    approx = FastSequenceTagger(tagger, device=CUDA, autocast_dtype=torch.bfloat16).predict(
        sentences
    )
    same = sum(len({s[:3] for s in a} & {s[:3] for s in b}) for a, b in zip(expected, approx))
    assert same >= 0.98 * sum(map(len, expected))


def test_fast_trainer_step_on_cuda_equals_flairs_loss_and_gradients(on_cuda, corpus):
    from tests.test_fast_training import (
        VARIANTS,
        _quirk_sentences,
        assert_flairs_loss_and_gradients,
    )

    for build in VARIANTS.values():
        torch.manual_seed(0)
        tagger = build(corpus).to(CUDA)
        assert tagger.linear.weight.device.type == "cuda"
        assert_flairs_loss_and_gradients(
            tagger, list(corpus.train)[:24] + _quirk_sentences(), rtol=1e-4
        )


def test_bf16_fast_trainer_on_cuda_tracks_float32_and_learns(on_cuda, corpus):
    from annotator.training.fast import FastTrainer
    from tests.test_fast_training import VARIANTS

    torch.manual_seed(0)
    tagger = VARIANTS["offline preset (word+char BiLSTM-CRF)"](corpus).to(CUDA)
    sentences = list(corpus.train)[:64]
    batch = np.arange(32)
    tagger.train()
    results = []
    for mixed in (False, True):
        trainer = FastTrainer(tagger, sentences, mixed_precision=mixed)
        assert trainer.mixed_precision is mixed
        tagger.zero_grad(set_to_none=True)
        loss, _ = trainer.batch_loss(batch)
        loss.backward()
        results.append(
            (
                loss.item(),
                torch.cat([p.grad.flatten() for p in tagger.parameters() if p.grad is not None]),
            )
        )
    (loss32, grad32), (loss16, grad16) = results
    assert loss16 == pytest.approx(loss32, rel=2e-2)
    assert torch.nn.functional.cosine_similarity(grad32, grad16, dim=0) > 0.99
    optimizer = torch.optim.SGD(tagger.parameters(), lr=0.1)
    first, second = (trainer.train_epoch(optimizer, epoch) for epoch in (1, 2))
    assert np.isfinite(first) and second < first


@pytest.mark.parametrize("devices", ["cuda:0", "cuda:0,cuda:0"])
def test_directory_run_on_the_gpu_equals_the_cpu_run(tiny_model, tmp_path, devices):
    from tests.test_runs import _docs, _run, assert_same_part_rows

    docs = _docs(tmp_path / "docs.jsonl", 300)
    common = [str(docs), "-m", str(tiny_model), "--format", "parquet", "--part-size", "100"]
    cpu = _run(*common, "--device", "cpu", "-o", f"{tmp_path / 'cpu'}/")
    gpu = _run(*common, "--devices", devices, "-o", f"{tmp_path / 'gpu'}/")
    assert cpu.exit_code == gpu.exit_code == 0, gpu.output
    assert gpu.output.splitlines()[-1].startswith("300 documents")
    assert_same_part_rows(tmp_path / "gpu", tmp_path / "cpu")
