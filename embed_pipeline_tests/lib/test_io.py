import pytest

from embed_pipeline.lib.io import atomic_path, read_jsonl, read_qrels, write_json


def test_atomic_file_write_keeps_the_old_file_when_the_writer_crashes(tmp_path):
    target = tmp_path / "report.json"
    write_json({"v": 1}, target)
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"v": 2, "half')
            raise RuntimeError("crash mid-write")
    assert target.read_text().strip().startswith('{\n  "v": 1')
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"], "no temporary file left behind"


def test_atomic_folder_replace(tmp_path):
    target = tmp_path / "index"
    for version in ("old", "new"):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "data").write_text(version)
    assert (target / "data").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["index"]


def test_read_jsonl_reports_bad_lines_and_skips_blank_ones(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_bytes(b'{"_id": "1", "text": "ok"}\n\n{broken\n"a string"\n\xff\xfe\n')
    rows, bad = read_jsonl(path)
    assert rows == [{"_id": "1", "text": "ok"}]
    assert [(n, reason.split(":")[0]) for n, reason in bad] == [(3, "invalid JSON"), (4, "not a JSON object"), (5, "invalid UTF-8")]


def test_read_qrels_with_and_without_header(tmp_path):
    (tmp_path / "a.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0\n")
    (tmp_path / "b.tsv").write_text("q1\td1\t2\n")
    assert read_qrels(tmp_path / "a.tsv")[["query_id", "passage_id"]].values.tolist() == [["q1", "d1"]]
    assert read_qrels(tmp_path / "b.tsv")["score"].tolist() == [2]
