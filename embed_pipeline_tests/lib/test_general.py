"""The forgetting guard: the general-domain reference set, its score, the report block and the gate clause."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from embed_pipeline.lib.config import GateConfig, parse_config
from embed_pipeline.lib.general import ReferenceSetError, general_block, general_score, read_sts, spearman
from embed_pipeline.lib.promotion import evaluate_gate
from embed_pipeline_tests.reports import CLEAR_LIFT, make_report

SHIPPED = Path(__file__).resolve().parents[2] / "data" / "general" / "sts_reference.tsv"
GOLD = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 4.2]


def write_set(path: Path, scores=GOLD) -> Path:
    lines = [f"test\tf\t2026\t{i:04d}\t{s:.3f}\tsentence a {i}\tsentence b {i}" for i, s in enumerate(scores)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def angle_encoder(faithful: str):
    """A fake encoder: model `faithful` puts pair i's sentences at an angle that shrinks with its gold
    score (cosine ranks the pairs as people do); any other model puts them at scrambled angles."""
    def encode(model_ref: str, texts: list[str]) -> np.ndarray:
        out = []
        for text in texts:
            i = int(text.rsplit(" ", 1)[1])
            side_b = " b " in text
            angle = (5 - GOLD[i]) / 5 * 1.5 if model_ref == faithful else ((i * 7) % 12) / 12 * 1.5
            out.append([np.cos(angle), np.sin(angle)] if side_b else [1.0, 0.0])
        return np.array(out)
    return encode


def test_read_sts_parses_the_layout_and_refuses_a_broken_line(tmp_path):
    ref = read_sts(write_set(tmp_path / "ok.tsv"))
    assert list(ref.pairs.columns) == ["sentence1", "sentence2", "score"] and len(ref.pairs) == len(GOLD)
    broken = tmp_path / "broken.tsv"
    broken.write_text(write_set(tmp_path / "x.tsv").read_text() + "test\tf\t2026\t9\tsix\ta\tb\n")
    with pytest.raises(ReferenceSetError, match="line 13"):
        read_sts(broken)
    with pytest.raises(ReferenceSetError, match="does not exist"):
        read_sts(tmp_path / "missing.tsv")


def test_the_shipped_reference_set_parses():
    ref = read_sts(SHIPPED)
    assert 100 <= len(ref.pairs) <= 200
    assert ref.pairs["score"].between(0, 5).all() and ref.pairs["score"].nunique() > 10


def test_spearman_matches_the_textbook_and_the_score_tells_a_faithful_model_from_a_forgetful_one(tmp_path):
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)  # 1 - 6*4/(5*24)
    ref = read_sts(write_set(tmp_path / "ref.tsv"))
    encode = angle_encoder("base")
    assert general_score(ref, "base", encode) == pytest.approx(1.0)
    assert general_score(ref, "tuned", encode) < 0.5


def test_general_block_scores_three_models_and_says_when_the_guard_is_off(tmp_path):
    ref = read_sts(write_set(tmp_path / "ref.tsv"))
    block = general_block(ref, {"base": "base", "champion": None, "candidate": "tuned"}, angle_encoder("base"))
    assert block["available"] and block["pairs"] == len(GOLD) and block["metric"] == "spearman_cosine"
    assert block["champion"] == block["base"] == pytest.approx(1.0)  # no champion yet: the base stands in
    assert block["candidate_minus_base"] == pytest.approx(block["candidate"] - block["base"])
    off = general_block(None, {"base": "base", "candidate": "tuned"}, angle_encoder("base"))
    assert off == {"available": False, "reason": "no general_reference in the config: the forgetting guard is off"}


def general(candidate: float, base: float = 0.85) -> dict:
    return {"available": True, "set": "ref.tsv", "pairs": 101, "metric": "spearman_cosine", "base": base,
            "champion": base, "candidate": candidate, "candidate_minus_base": round(candidate - base, 6)}


def clause(report: dict, gate: GateConfig) -> dict:
    return next(c for c in evaluate_gate(report, gate)["clauses"] if c["name"] == "general-domain score vs base")


def test_the_gate_refuses_a_candidate_that_forgot_more_than_the_allowed_drop():
    report = make_report(*CLEAR_LIFT, {"a": 50, "b": 50})
    report["general"] = general(candidate=0.84)
    kept = clause(report, GateConfig())
    assert kept["passed"] and kept["value"] == pytest.approx(-0.01) and kept["threshold"] == -0.02
    report["general"] = general(candidate=0.80)
    verdict = evaluate_gate(report, GateConfig())
    assert not verdict["passed"] and "general-domain score vs base -0.0500 is not >= -0.0200" in verdict["summary"]
    assert clause(report, dataclasses.replace(GateConfig(), max_general_drop=0.06))["passed"]


def test_without_a_reference_set_the_clause_passes_and_says_the_guard_is_off():
    report = make_report(*CLEAR_LIFT, {"a": 50, "b": 50})
    assert clause(report, GateConfig())["passed"] and "guard off" in clause(report, GateConfig())["detail"]
    report["general"] = {"available": False, "reason": "no general_reference in the config: the forgetting guard is off"}
    off = clause(report, GateConfig())
    assert off["passed"] and off["value"] is None and "forgetting guard is off" in off["detail"]


def test_config_names_the_reference_set_relative_to_the_config(tmp_path):
    raw = {"corpus": "c.jsonl", "artifacts_dir": "a", "eval": "e.parquet", "general_reference": "general/ref.tsv",
           "gate": {"max_general_drop": 0.05}}
    config = parse_config(raw, tmp_path)
    assert config.general_reference == (tmp_path / "general" / "ref.tsv").resolve()
    assert config.gate.max_general_drop == 0.05
    assert parse_config({k: v for k, v in raw.items() if k != "general_reference"}, tmp_path).general_reference is None
