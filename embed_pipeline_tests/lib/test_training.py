"""Training: dev split, columns, best-checkpoint selection on the dev split, and resume after a kill."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest
from pydantic import ValidationError

from embed_pipeline.lib.config import TrainingConfig
from embed_pipeline.lib.training import DEV_METRIC, SELECTION_METRIC, last_complete_checkpoint, merge_with_base, set_attention_dropout, train_model
from embed_pipeline.lib.training_data import checkpoint_key, dev_set, split_dev, training_columns
from embed_pipeline_tests.fixture_data import CURATED, PASSAGES

TEXTS = {pid: f"{title}\n{text}" for pid, (title, text) in PASSAGES.items()}
# Hand-picked hard negatives: same component, wrong job (the distractors a real miner finds).
NEGATIVES = {"chain-lube": ["chain-clean", "chain-wear"], "chain-wear": ["chain-lube"], "chain-clean": ["chain-lube"],
             "tire-puncture": ["tubeless-setup"], "tire-pressure": ["tubeless-setup"], "brake-bleed": ["brake-pads", "brake-rub"],
             "brake-rub": ["brake-pads"], "derailleur-index": ["derailleur-limit"], "derailleur-limit": ["derailleur-index"],
             "wheel-true": ["hub-bearings"]}


def triples(extra_synthetic: bool = False) -> pd.DataFrame:
    rows = [(q, p, NEGATIVES[p], "curated") for q, p in CURATED]
    if extra_synthetic:
        rows += [(title, pid, [], "synthetic") for pid, (title, _) in list(PASSAGES.items())[:6]]
    return pd.DataFrame(rows, columns=["query", "passage_id", "negatives", "source"])


def test_split_dev_holds_out_whole_real_query_groups():
    frame = triples(extra_synthetic=True)
    frame = pd.concat([frame, frame.iloc[[0]].assign(passage_id="chain-clean", negatives=[["chain-wear"]])], ignore_index=True)
    train, dev = split_dev(frame, share=0.25, max_queries=100, seed=3)
    assert 1 <= dev["query"].nunique() <= round(0.25 * frame["query"].nunique())
    assert set(dev["query"]).isdisjoint(train["query"])
    assert set(dev["passage_id"]).isdisjoint(train["passage_id"]), "a dev positive must not be trained on"
    assert (dev["source"] == "curated").all(), "synthetic queries must not be dev queries"
    left_out = len(frame) - len(train) - len(dev)  # exactly the dev groups' synthetic rows
    assert left_out == ((frame["source"] == "synthetic") & frame["passage_id"].isin(dev["passage_id"])).sum()
    again_train, again_dev = split_dev(frame, share=0.25, max_queries=100, seed=3)
    assert again_dev.equals(dev) and again_train.equals(train)
    _, capped = split_dev(frame, share=0.25, max_queries=1, seed=3)
    assert capped["query"].nunique() == 1


def test_split_dev_never_separates_near_twins_or_a_shared_positive():
    # The SciFact failure: two claims, the same sentence with one word swapped, citing one abstract;
    # and two differently worded claims citing one abstract. Each pair must land on one side.
    rows = [(f"distinct claim number {i} about cells and tissue", f"p{i}", [], "curated") for i in range(20)]
    rows += [("vitamin d deficiency raises fracture risk in older men", "pv", [], "curated"),
             ("vitamin d deficiency raises fracture risk in older women", "pv2", [], "curated"),
             ("statins lower cholesterol", "ps", [], "curated"),
             ("ldl falls under atorvastatin therapy", "ps", [], "curated")]
    frame = pd.DataFrame(rows, columns=["query", "passage_id", "negatives", "source"])
    twins = {"vitamin d deficiency raises fracture risk in older men", "vitamin d deficiency raises fracture risk in older women"}
    shared = {"statins lower cholesterol", "ldl falls under atorvastatin therapy"}
    for seed in range(30):
        train, dev = split_dev(frame, share=0.25, max_queries=100, seed=seed, threshold=0.6)
        for pair in (twins, shared):
            assert len(pair & set(dev["query"])) in (0, 2) and len(pair & set(train["query"])) in (0, 2), (seed, pair)
        assert len(train) + len(dev) == len(frame)


def test_dev_set_pools_positives_negatives_and_seeded_fill():
    dev = triples().iloc[:2]
    pool = dev_set(dev, TEXTS, max_passages=8, seed=0)
    assert len(pool.corpus) == 8
    assert {"chain-lube", "chain-clean", "chain-wear"} <= set(pool.corpus)
    assert sorted(pool.relevant.values(), key=sorted) == [{"chain-lube"}, {"chain-wear"}]
    assert set(pool.queries.values()) == set(dev["query"])
    assert dev_set(dev, TEXTS, max_passages=8, seed=0) == pool


def test_training_columns_takes_hardest_negatives_and_pads_without_positives():
    frame = triples()
    columns, padded = training_columns(frame, TEXTS, num_negatives=2, seed=0)
    assert list(columns) == ["anchor", "positive", "negative_1", "negative_2"]
    assert columns["negative_1"][0] == TEXTS["chain-clean"] and columns["negative_2"][0] == TEXTS["chain-wear"]
    assert padded == sum(max(0, 2 - len(n)) for n in frame["negatives"])
    for i, (_, pid) in enumerate(CURATED):
        assert TEXTS[pid] not in (columns["negative_1"][i], columns["negative_2"][i])
    none, _ = training_columns(frame, TEXTS, num_negatives=0, seed=0)
    assert list(none) == ["anchor", "positive"]


def test_training_config_rejects_bad_values():
    for bad, key in [({"loss": "triplet"}, "loss"), ({"loss_terms": "doc_to_doc"}, "loss_terms"),
                     ({"hardness_strength": -1.0}, "hardness_strength"), ({"hardness_strength": 5.0, "num_negatives": 0}, "num_negatives >= 1"),
                     ({"attention_dropout": 1.0}, "attention_dropout"), ({"precision": "fp16"}, "precision"),
                     ({"processes": 0}, "processes"), ({"batch_size": 6, "processes": 4}, "multiple of processes"), ({"batch_size": 2, "processes": 2}, "2 rows per process")]:
        with pytest.raises(ValidationError, match=key):
            TrainingConfig(**bad)


def test_checkpoint_key_tracks_data_config_and_base_model():
    a = checkpoint_key("v1", TrainingConfig(), "fp")
    assert a == checkpoint_key("v1", TrainingConfig(), "fp")
    assert a != checkpoint_key("v2", TrainingConfig(), "fp")
    assert a != checkpoint_key("v1", TrainingConfig(learning_rate=TrainingConfig().learning_rate / 2), "fp")
    assert a != checkpoint_key("v1", TrainingConfig(processes=2), "fp"), "a checkpoint's data order depends on the process count"
    assert a != checkpoint_key("v1", TrainingConfig(), "another base model")


def test_attention_dropout_is_set_on_attention_only_and_the_saved_config_is_untouched(tiny_model_path):
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(tiny_model_path, device="cpu")
    dropouts = {name: m.p for name, m in model.named_modules() if isinstance(m, torch.nn.Dropout)}
    assert set(dropouts.values()) == {0.1}, dropouts  # BertConfig's defaults: attention and hidden dropout
    assert set_attention_dropout(model, 0.0) == 2  # one self-attention per layer
    after = {name: m.p for name, m in model.named_modules() if isinstance(m, torch.nn.Dropout)}
    zeroed = {name for name, p in after.items() if p == 0.0}
    assert zeroed and all(name.endswith("attention.self.dropout") for name in zeroed), zeroed
    assert any(p == 0.1 for p in after.values()), "hidden-state dropout stays"
    assert model[0].auto_model.config.attention_probs_dropout_prob == 0.1

    class LlamaStyleAttention(torch.nn.Module):  # attention dropout held as a float (Llama, Qwen, ModernBERT)
        attention_dropout = 0.1

    other = torch.nn.Sequential(LlamaStyleAttention(), torch.nn.Dropout(0.1))
    assert set_attention_dropout(other, 0.0) == 1
    assert other[0].attention_dropout == 0.0 and other[1].p == 0.1


def small_config(**overrides) -> TrainingConfig:
    values = {"epochs": 4, "batch_size": 4, "max_seq_length": 32, "logging_steps": 1, "checkpoint_steps": 2,
              "num_negatives": 1, "dev_max_passages": 12, "early_stopping_patience": 0, "learning_rate": 1e-3}
    return TrainingConfig(**{**values, **overrides})


def test_train_model_keeps_the_noise_aware_dev_checkpoint_and_restores_serving_length(tiny_model_path, tmp_path):
    from sentence_transformers import SentenceTransformer

    # cached + every interaction term + hardness weighting here; the plain defaults run in test_model_asset.py
    settings = small_config(loss="cached_mnrl", mini_batch_size=2, epochs=3, checkpoint_steps=4, loss_terms="gte",
                            hardness_strength=5.0)
    train, dev = split_dev(triples(), share=0.3, max_queries=10, seed=0)
    columns, _ = training_columns(train, TEXTS, settings.num_negatives, settings.seed)
    seen, lines = [], []

    from transformers import TrainerCallback

    class Capture(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append({**(logs or {}), "step": state.global_step})

    result = train_model(tiny_model_path, columns, settings, tmp_path / "model", tmp_path / "ckpt",
                         dev=dev_set(dev, TEXTS, settings.dev_max_passages, 0), callbacks=[Capture()], on_progress=lines.append)

    dev_scores = [entry[DEV_METRIC] for entry in seen if DEV_METRIC in entry]
    assert len(dev_scores) >= 2, seen
    assert max(e["step"] for e in seen if DEV_METRIC in e) == result.steps, "the final step is a candidate too"
    # The noise-aware rule (lib/dev_selection.py): the kept checkpoint is the latest not worse than the best.
    kept = max(int(e[SELECTION_METRIC]) for e in seen if SELECTION_METRIC in e)
    assert kept > 0
    assert result.best_dev_ndcg_at_10 == pytest.approx(next(e[DEV_METRIC] for e in seen if e["step"] == kept and DEV_METRIC in e))
    assert result.resumed_from_step == 0 and result.steps > 0
    assert result.merged_dev_ndcg_at_10 is None, "no base_merge, no averaged model"
    assert not (tmp_path / "ckpt").exists(), "a finished job leaves nothing to resume"
    saved = SentenceTransformer(str(result.model_dir), device="cpu")
    assert saved.max_seq_length == SentenceTransformer(tiny_model_path, device="cpu").max_seq_length
    assert any(line.startswith("step ") and "loss" in line for line in lines), lines


CHILD = textwrap.dedent("""
    import json, sys, time
    import pandas as pd
    from transformers import TrainerCallback
    from embed_pipeline.lib.config import TrainingConfig
    from embed_pipeline.lib.training import train_model

    model, columns, settings, out, ckpt = sys.argv[1:6]
    columns = json.loads(open(columns).read())
    settings = TrainingConfig(**json.loads(settings))

    class Slow(TrainerCallback):  # a real job's steps take seconds; keep the child alive until it is killed
        def on_step_end(self, args, state, control, **kwargs):
            time.sleep(0.05)

    train_model(model, columns, settings, out, ckpt, callbacks=[Slow()])
""")


def test_training_resumes_from_last_checkpoint_after_a_kill(tiny_model_path, tmp_path):
    import dataclasses

    settings = small_config(epochs=200)
    columns, _ = training_columns(triples(), TEXTS, settings.num_negatives, settings.seed)
    (tmp_path / "columns.json").write_text(json.dumps(columns))
    (tmp_path / "child.py").write_text(CHILD)
    ckpt = tmp_path / "ckpt"
    child = subprocess.Popen(
        [sys.executable, str(tmp_path / "child.py"), tiny_model_path, str(tmp_path / "columns.json"),
         json.dumps(dataclasses.asdict(settings)), str(tmp_path / "model"), str(ckpt)],
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while last_complete_checkpoint(ckpt) is None:
            assert child.poll() is None, child.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    killed_at = int(last_complete_checkpoint(ckpt).name.removeprefix("checkpoint-"))
    assert not (tmp_path / "model").exists(), "the killed run must not have finished"

    from transformers import TrainerCallback

    started = []

    class StopSoon(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            started.append(state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = True

    result = train_model(tiny_model_path, columns, settings, tmp_path / "model", ckpt, callbacks=[StopSoon()])

    assert result.resumed_from_step == killed_at > 0
    assert started == [killed_at]
    assert result.steps == killed_at + 1
    assert (tmp_path / "model" / "modules.json").is_file()


def test_merge_with_base_averages_float_weights_and_keeps_integer_buffers():
    import torch

    def module(fill: float):
        m = torch.nn.Linear(3, 2)
        m.register_buffer("position_ids", torch.arange(4))
        torch.nn.init.constant_(m.weight, fill)
        torch.nn.init.constant_(m.bias, -fill)
        return m

    tuned, base = module(1.0), module(3.0)
    base.position_ids += 10  # an integer buffer the average must not touch

    assert merge_with_base(tuned, base, 0.25) == 2
    assert torch.equal(tuned.weight, torch.full((2, 3), 1.5)) and torch.equal(tuned.bias, torch.full((2,), -1.5))
    assert torch.equal(tuned.position_ids, torch.arange(4))
    assert torch.equal(base.weight, torch.full((2, 3), 3.0)), "the base model is read, never changed"
    with pytest.raises(ValueError, match="weight is \\(2, 3\\) here, \\(2, 4\\) there"):
        wider = torch.nn.Linear(4, 2)
        wider.register_buffer("position_ids", torch.arange(4))
        merge_with_base(module(1.0), wider, 0.5)


def test_a_base_merge_saves_the_average_of_the_tuned_and_the_base_model(tiny_model_path, tmp_path):
    from sentence_transformers import SentenceTransformer

    from transformers import TrainerCallback

    tuned = {}

    class KeepTuned(TrainerCallback):  # on_train_end comes after the best checkpoint is loaded, before the average
        def on_train_end(self, args, state, control, model=None, **kwargs):
            tuned.update({name: w.detach().clone() for name, w in model.state_dict().items()})

    settings = small_config(epochs=2, checkpoint_steps=100, base_merge=0.5)
    train, dev_rows = split_dev(triples(), share=0.3, max_queries=10, seed=0)
    columns, _ = training_columns(train, TEXTS, settings.num_negatives, settings.seed)
    lines = []
    result = train_model(tiny_model_path, columns, settings, tmp_path / "merged", tmp_path / "ckpt",
                         dev=dev_set(dev_rows, TEXTS, settings.dev_max_passages, 0), callbacks=[KeepTuned()], on_progress=lines.append)

    base, merged = (SentenceTransformer(str(p), device="cpu").state_dict() for p in (tiny_model_path, tmp_path / "merged"))
    floats = [name for name, w in merged.items() if w.is_floating_point()]
    assert floats and set(floats) <= set(tuned)
    assert any(not (tuned[n] == base[n]).all() for n in floats), "training moved the weights"
    for name in floats:
        assert (merged[name] - (tuned[name] + base[name]) / 2).abs().max() < 1e-5, name
    assert any("averaged" in line and "50% base" in line for line in lines), lines
    assert 0 < result.merged_dev_ndcg_at_10 <= 1 and result.best_dev_ndcg_at_10 is not None


def test_merge_with_base_averages_a_tied_weight_once():
    import torch

    def tied(fill: float):
        m = torch.nn.Module()
        m.embed, m.head = torch.nn.Embedding(5, 3), torch.nn.Linear(3, 5, bias=False)
        m.head.weight = m.embed.weight  # one tensor under two names, as T5's shared embeddings
        torch.nn.init.constant_(m.embed.weight, fill)
        return m

    tuned = tied(1.0)

    assert merge_with_base(tuned, tied(3.0), 0.5) == 1
    assert torch.equal(tuned.head.weight, torch.full((5, 3), 2.0))
