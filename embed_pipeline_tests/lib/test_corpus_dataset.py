"""The corpus dataset: a streaming build that quarantines exactly as the in-memory loader did,
bounded blocks, shards by id, content hashes, reuse of an unchanged source, lookups by id."""

import json

import pandas as pd
import pytest

from embed_pipeline.lib import corpus as corpus_lib
from embed_pipeline.lib.corpus import (
    CorpusDataset,
    build_corpus_dataset,
    corpus_dataset,
    passage_text,
    shard_key,
    shard_of,
)
from embed_pipeline.lib.io import InputError, read_jsonl_numbered
from embed_pipeline.lib.text import clean_text, text_hash
from embed_pipeline_tests.fixture_data import PASSAGES


def legacy_load_corpus(path):
    """The loader this project shipped before the dataset (whole file in memory), kept here as the
    reference the streaming build must agree with, row for row and reason for reason."""
    numbered, bad = read_jsonl_numbered(path)
    raw = pd.DataFrame([row for _, row in numbered])
    rejected = [{"line": n, "reason": reason, "passage_id": ""} for n, reason in bad]
    id_col = "_id" if "_id" in raw.columns else "passage_id"
    frame = pd.DataFrame({
        "passage_id": raw[id_col].map(lambda v: "" if v is None or pd.isna(v) else str(v).strip()),
        "title": raw["title"].map(clean_text) if "title" in raw.columns else "",
        "text": raw["text"].map(clean_text),
    })
    frame["line"] = [n for n, _ in numbered]
    reasons = pd.Series("", index=frame.index)
    reasons[frame["text"] == ""] = "empty text"
    reasons[frame["passage_id"] == ""] = "missing id"
    reasons[frame["passage_id"].duplicated(keep="first") & (reasons == "")] = "duplicate id"
    bad_rows = frame[reasons != ""].assign(reason=reasons[reasons != ""])
    rejected += bad_rows[["line", "reason", "passage_id"]].to_dict("records")
    passages = frame[reasons == ""][["passage_id", "title", "text"]].reset_index(drop=True)
    quarantine = pd.DataFrame(rejected, columns=["line", "reason", "passage_id"]).sort_values("line", kind="stable")
    return passages, quarantine.reset_index(drop=True)


def _messy_corpus(path, copies=6):
    """The fixture passages several times over with every kind of bad row sprinkled in (duplicates far
    apart, so they fall in different blocks)."""
    lines = []
    for copy in range(copies):
        for pid, (title, text) in PASSAGES.items():
            lines.append(json.dumps({"_id": f"{pid}-{copy}", "title": title, "text": text}))
        lines += ["", '{"_id": "broken", ', json.dumps({"_id": f"empty-{copy}", "text": "   "}),
                  json.dumps({"title": "no id", "text": "Spokes need tension."}), json.dumps(["not", "an", "object"]),
                  json.dumps({"_id": f"{next(iter(PASSAGES))}-0", "text": "a repeated id"}),
                  json.dumps({"_id": f"  spaced-{copy} ", "title": "  Chain\tcare ", "text": "Oil  the\nchain."})]
    path.write_text("\n".join(lines) + "\n")
    return path


def _rows(dataset: CorpusDataset) -> pd.DataFrame:
    return dataset.frame(["passage_id", "title", "text"]).sort_values("passage_id").reset_index(drop=True)


def test_streaming_build_quarantines_exactly_as_the_in_memory_loader(tmp_path):
    source = _messy_corpus(tmp_path / "corpus.jsonl")
    expected_passages, expected_quarantine = legacy_load_corpus(source)
    # Blocks of 7 rows: the corpus is many blocks long, and duplicates sit blocks apart.
    dataset = build_corpus_dataset(source, tmp_path / "ds", num_shards=4, block_rows=7)
    pd.testing.assert_frame_equal(_rows(dataset), expected_passages.sort_values("passage_id").reset_index(drop=True))
    got = dataset.quarantine()[["line", "reason", "passage_id"]]
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected_quarantine, check_dtype=False)
    manifest = dataset.manifest
    assert manifest["rows_in"] == len(expected_passages) + len(expected_quarantine) == manifest["passages"] + manifest["quarantined"]
    assert manifest["quarantine_reasons"]["duplicate id"] == 6
    # The in-memory loader of this version agrees too.
    loaded = corpus_lib.load_corpus(source)
    pd.testing.assert_frame_equal(loaded.quarantine, expected_quarantine, check_dtype=False)


def test_passages_land_in_their_shard_with_the_hash_of_what_the_model_reads(tmp_path):
    source = _messy_corpus(tmp_path / "corpus.jsonl", copies=3)
    dataset = build_corpus_dataset(source, tmp_path / "ds", num_shards=3, block_rows=5)
    assert dataset.keys == [shard_key(i, 3) for i in range(3)]
    total = 0
    for key in dataset.keys:
        frame = next(iter(dataset.batches(["passage_id", "title", "text", "content_hash"], [key], batch_rows=10_000)))
        total += len(frame)
        assert {shard_key(shard_of(pid, 3), 3) for pid in frame["passage_id"]} == {key}
        assert list(frame["content_hash"]) == [text_hash(passage_text(t, x)) for t, x in zip(frame["title"], frame["text"])]
        assert dataset.shard_rows(key) == len(frame)
    assert total == len(dataset)
    # Lookups by id read the rows asked for (several row groups per shard file), unknown ids are absent.
    wanted = ["spaced-2", f"{next(iter(PASSAGES))}-1", "never-there"]
    found = dataset.lookup(wanted)
    assert sorted(found.index) == sorted(wanted[:2])
    assert found.loc["spaced-2", "title"] == "Chain care" and found.loc["spaced-2", "text"] == "Oil the chain."


def test_an_unchanged_source_is_read_once_and_an_edit_makes_a_new_dataset(tmp_path, monkeypatch):
    source = _messy_corpus(tmp_path / "corpus.jsonl", copies=1)
    first = corpus_dataset(source, tmp_path / "datasets", 2)
    monkeypatch.setattr(corpus_lib, "build_corpus_dataset", lambda *a, **k: pytest.fail("rebuilt an unchanged source"))
    assert corpus_dataset(source, tmp_path / "datasets", 2).folder == first.folder
    monkeypatch.undo()
    text = source.read_text().replace("Oil  the", "Grease the")
    source.write_text(text)
    edited = corpus_dataset(source, tmp_path / "datasets", 2)
    assert edited.folder != first.folder
    changed = [k for k in first.keys if first.shard_hashes[k] != edited.shard_hashes[k]]
    assert changed == [shard_key(shard_of("spaced-0", 2), 2)]  # only the edited passage's shard


def test_a_folder_of_jsonl_and_parquet_files_is_one_corpus_and_quarantine_names_the_file(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "a.jsonl").write_text(json.dumps({"_id": "a1", "text": "Chains stretch."}) + "\n{bad\n")
    pd.DataFrame({"_id": ["b1", "a1"], "title": ["", ""], "text": ["Brakes squeal.", "again"]}).to_parquet(folder / "b.parquet")
    dataset = build_corpus_dataset(folder, tmp_path / "ds", 2)
    assert sorted(_rows(dataset)["passage_id"]) == ["a1", "b1"]
    quarantine = dataset.quarantine()
    assert [(p.rsplit("/", 1)[-1], n, r[:12]) for p, n, r in zip(quarantine["file"], quarantine["line"], quarantine["reason"])] == [
        ("a.jsonl", 2, "invalid JSON"), ("b.parquet", 2, "duplicate id")]


def test_text_given_as_a_json_list_or_object_is_quarantined_not_stringified(tmp_path):
    source = tmp_path / "corpus.jsonl"
    source.write_text("\n".join([
        json.dumps({"_id": "ok", "text": "Tyres lose pressure."}),
        json.dumps({"_id": "list", "text": ["a", "b"]}),
        json.dumps({"_id": "obj", "title": {"x": 1}, "text": "fine"}),
    ]) + "\n")
    dataset = build_corpus_dataset(source, tmp_path / "ds", 1)
    assert list(dataset.column("passage_id")) == ["ok"]
    assert dataset.quarantine()[["line", "reason", "passage_id"]].values.tolist() == [
        [2, "text is a JSON array, not a string", "list"], [3, "title is a JSON object, not a string", "obj"]]


def test_what_is_not_a_corpus_is_one_input_error(tmp_path):
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(InputError, match="must hold .jsonl or .parquet files"):
        build_corpus_dataset(tmp_path / "empty_dir", tmp_path / "ds", 1)
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": "x", "body": "no id or text"}) + "\n")
    with pytest.raises(InputError, match="needs columns"):
        build_corpus_dataset(tmp_path / "c.jsonl", tmp_path / "ds", 1)
    (tmp_path / "d.jsonl").write_text(json.dumps({"_id": "x", "text": " "}) + "\n")
    with pytest.raises(InputError, match="no readable passages"):
        build_corpus_dataset(tmp_path / "d.jsonl", tmp_path / "ds", 1)
    assert not (tmp_path / "ds").exists()  # a failed build leaves no dataset behind
