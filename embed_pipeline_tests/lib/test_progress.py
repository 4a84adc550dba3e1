"""Long encodes say how far they are with an ETA, at a steady cadence, through the caller's `say`;
the lines change nothing in the vectors."""

import numpy as np
import pandas as pd

from embed_pipeline.lib.encoding import encode, encode_cached, load_model, model_fingerprint
from embed_pipeline.lib.progress import ProgressLine
from embed_pipeline_tests.fixture_data import PASSAGES

TEXTS = [f"{title} note {n}: {text}" for n in range(5) for title, text in PASSAGES.values()]


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_line_every_interval_and_the_last_one_with_rate_and_eta():
    lines, clock = [], FakeClock()
    line = ProgressLine(lines.append, "encoding", total=1000, every=10.0, clock=clock)
    for _ in range(9):  # 100 texts per 4 s: a line every third update (12 s), none in between
        clock.now += 4.0
        line.advance(100)
    assert lines == ["encoding: 300/1000 texts (30%), 25 texts/s, eta 28 s",
                     "encoding: 600/1000 texts (60%), 25 texts/s, eta 16 s",
                     "encoding: 900/1000 texts (90%), 25 texts/s, eta 4 s"]
    clock.now += 1.0
    line.advance(100)  # the work is complete: said at once
    assert lines[-1] == "encoding: 1000/1000 texts (100%), 27 texts/s, eta 0 s"


def test_work_found_piece_by_piece_grows_the_total():
    lines, clock = [], FakeClock()
    line = ProgressLine(lines.append, "encoding", every=10.0, clock=clock)
    line.expect(50)
    clock.now = 5.0
    line.advance(50)
    line.expect(50)
    assert line.line() == "encoding: 50/100 texts (50%), 10 texts/s, eta 5 s"


def test_encode_cached_reports_what_it_encodes_and_ends_at_the_total(tiny_model_path, tmp_path):
    model = load_model(tiny_model_path, device="cpu")
    fingerprint = model_fingerprint(model)
    lines = []
    vectors, stats = encode_cached(model, TEXTS, tmp_path / "cache", fingerprint, batch_size=8, progress=False,
                                   precision="fp32", on_progress=lines.append)
    assert lines[0] == "encoding 100 of 100 unique texts in fp32 (0 cached)"
    assert lines[-1].startswith("encoding: 100/100 texts (100%)") and "eta 0 s" in lines[-1]
    np.testing.assert_allclose(vectors, encode(model, TEXTS, batch_size=8, progress=False, precision="fp32"), atol=1e-5)
    again = []
    encode_cached(model, TEXTS, tmp_path / "cache", fingerprint, batch_size=8, progress=False, precision="fp32",
                  on_progress=again.append)
    assert again == []  # everything cached: nothing to report


def test_shards_report_one_progress_over_all_of_them(tiny_model_path, tmp_path):
    from embed_pipeline.lib.shards import embed_shards
    from embed_pipeline_tests.fixture_data import build_dataset

    model = load_model(tiny_model_path, device="cpu")
    fingerprint = model_fingerprint(model)
    frame = pd.DataFrame({"passage_id": [f"p{i}" for i in range(len(TEXTS))], "title": "", "text": TEXTS})
    dataset = build_dataset(frame, tmp_path / "corpus", 2)
    encode_cached(model, TEXTS[:30], tmp_path / "cache", fingerprint, batch_size=8, progress=False,
                  precision="fp32")  # 30 passages already cached
    lines = []
    done = embed_shards(model, fingerprint, dataset, dataset.keys, tmp_path / "out", tmp_path / "cache", batch_size=8,
                        precision="fp32", on_progress=lines.append)
    assert lines[0] == "embedding 2 shard(s) of 100 passages: 70 to encode, the rest cached"
    assert lines[-1].startswith("encoding: 70/70 texts (100%)")
    assert sum(s.encoded for s in done.values()) == 70