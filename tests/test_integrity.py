"""Nothing lost, ever: damaged compressed input, endless records, failing side outputs, bad
configs, closed streams and signals each end in a clear message and the documented exit."""

from __future__ import annotations

import io
import json

import pytest
from click.testing import CliRunner

from annotator.cli import cli
from annotator.io.readers import expand_inputs, read_documents
from annotator.records import Document, RecordError

zstandard = pytest.importorskip("zstandard")


def _jsonl(count: int) -> bytes:
    return b"".join(
        json.dumps({"id": i, "text": f"Obama visited Berlin {i}."}).encode() + b"\n"
        for i in range(count)
    )


# --- damaged compressed input ------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_a_truncated_zstd_file_is_a_bad_record_where_it_broke_in_files_folders_and_stdin(
    tmp_path, monkeypatch, keep
):
    data = zstandard.ZstdCompressor().compress(_jsonl(20000))
    data = data[: int(len(data) * keep)]
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "t.jsonl.zst").write_bytes(data)
    *documents, broken = read_documents(expand_inputs([str(folder)]))
    assert all(isinstance(d, Document) for d in documents) and 0 < len(documents) < 20000
    assert isinstance(broken, RecordError) and broken.row == len(documents) + 1
    assert "ended before" in broken.reason

    from types import SimpleNamespace

    monkeypatch.setattr("sys.stdin", SimpleNamespace(buffer=io.BytesIO(data)))
    *from_stdin, broken = read_documents(["-"])
    assert len(from_stdin) == len(documents) and isinstance(broken, RecordError)


def test_whole_zstd_files_of_several_frames_are_read_whole(tmp_path):
    compress = zstandard.ZstdCompressor().compress
    (tmp_path / "a.jsonl.zst").write_bytes(compress(_jsonl(50)) + compress(_jsonl(30)))
    (tmp_path / "empty.jsonl.zst").write_bytes(b"")
    records = list(
        read_documents([str(tmp_path / "a.jsonl.zst"), str(tmp_path / "empty.jsonl.zst")])
    )
    assert len(records) == 80 and all(isinstance(r, Document) for r in records)


def test_damaged_zstd_is_a_bad_record_that_on_error_skip_skips(tmp_path, tiny_model):
    damaged = tmp_path / "d.jsonl.zst"
    damaged.write_bytes(b"\x28\xb5\x2f\xfd" + bytes(range(256)) * 8)
    [record] = read_documents([str(damaged)])
    assert isinstance(record, RecordError) and record.row == 0 and "zstd" in record.reason
    good = tmp_path / "good.jsonl"
    good.write_bytes(_jsonl(2))
    out = tmp_path / "o.jsonl"
    args = ["annotate", str(damaged), str(good), "-m", str(tiny_model), "-o", str(out)]
    result = CliRunner().invoke(cli, [*args, "--on-error", "skip"])
    assert result.exit_code == 3 and "Traceback" not in result.output, result.output
    assert len(out.read_text().splitlines()) == 2
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
