"""Shared fixtures: a tiny BERT built offline (no downloads) and a fixture project on disk."""

import os
from pathlib import Path

import pytest

from embed_pipeline_tests.fixture_data import PASSAGES, write_project

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> str:
    """A 2-layer, 32-wide BERT with a WordPiece vocabulary trained on the fixture corpus,
    saved as a sentence-transformers folder (mean pooling). Random weights, seeded: real
    encode/train code paths in a fraction of a second."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root = tmp_path_factory.mktemp("tiny-model")
    hf_dir = root / "hf"
    hf_dir.mkdir()
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    texts = [f"{t} {x}" for t, x in PASSAGES.values()]
    wordpiece.train_from_iterator(texts * 3, vocab_size=600, min_frequency=1)
    wordpiece.save_model(str(hf_dir))
    tokenizer = BertTokenizerFast(vocab_file=str(hf_dir / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(hf_dir)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(hf_dir)
    transformer = Transformer(str(hf_dir), max_seq_length=64)
    model = SentenceTransformer(modules=[transformer, Pooling(transformer.get_word_embedding_dimension(), "mean")], device="cpu")
    out = root / "st"
    model.save(str(out))
    return str(out)


@pytest.fixture()
def project(tmp_path: Path, tiny_model_path: str) -> Path:
    """A fixture project (corpus, pairs, eval, logs) and its config path; artifacts under tmp_path."""
    return write_project(tmp_path / "project", tiny_model_path)
