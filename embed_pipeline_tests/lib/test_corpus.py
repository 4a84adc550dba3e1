import json

import pandas as pd

from embed_pipeline.lib.corpus import load_corpus


def passage(pid, text="Lubricate the chain after riding in the rain.", title="chain care"):
    return json.dumps({"_id": pid, "title": title, "text": text})


def test_corpus_quarantine_names_the_file_line_an_editor_shows(tmp_path):
    """Blank and broken lines before a bad row must not shift its number: every rejected row
    carries the 1-based line of the file, whether it was rejected while reading or validating."""
    lines = [passage(f"p{i}") for i in range(1, 5)]  # lines 1-4
    lines += ["", '{"_id": "broken", ', ""]  # line 5 blank, line 6 invalid JSON, line 7 blank
    lines += [passage("p5"), passage("p6"), passage("p7")]  # lines 8-10
    lines += [passage("p8", text="   ")]  # line 11: empty text
    lines += [passage(f"p{i}") for i in range(9, 13)]  # lines 12-15
    lines += [passage("p3", text="Brake pads wear faster in the wet.")]  # line 16: duplicate id
    lines += [json.dumps({"title": "no id", "text": "Spokes need tension."})]  # line 17: missing id
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n")
    corpus = load_corpus(path)
    assert list(corpus.quarantine.columns) == ["line", "reason", "passage_id"]
    rows = corpus.quarantine.to_dict("records")
    assert [(r["line"], r["reason"]) for r in rows] == [
        (6, rows[0]["reason"]), (11, "empty text"), (16, "duplicate id"), (17, "missing id")]
    assert rows[0]["reason"].startswith("invalid JSON") and rows[0]["passage_id"] == ""
    assert rows[1]["passage_id"] == "p8" and rows[2]["passage_id"] == "p3"
    assert corpus.rows_in == 15 == len(corpus.passages) + len(corpus.quarantine)
    # the Parquet the corpus asset writes keeps the integer line
    corpus.quarantine.to_parquet(tmp_path / "q.parquet")
    assert pd.read_parquet(tmp_path / "q.parquet")["line"].tolist() == [6, 11, 16, 17]


def test_parquet_corpus_quarantine_names_the_1_based_row(tmp_path):
    frame = pd.DataFrame({"_id": ["a", "b", "a"], "title": ["", "", ""], "text": ["chain", "", "brake"]})
    frame.to_parquet(tmp_path / "corpus.parquet")
    corpus = load_corpus(tmp_path / "corpus.parquet")
    assert corpus.quarantine[["line", "reason"]].values.tolist() == [[2, "empty text"], [3, "duplicate id"]]
