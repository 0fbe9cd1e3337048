"""A real model: a MiniLM-class sentence encoder (transformers' ``BertModel`` with all-MiniLM-L6-v2's
dimensions: hidden 384, 6 layers, 12 heads, FFN 1536, 30522-token vocabulary), seeded random weights, mean
pooling; quantized by ``lowbit.quantize_model`` to w4g32 and compiled by lowbit through ``torch.export``.

Tolerances: compiled and eager quantized outputs are the same float32 computation in another order (1e-5 of
the output range, as tests/test_torch_frontend.py). Against the float model, 4-bit weights keep the sentence
embeddings' direction: cosine similarity >= 0.99 (measured 0.998).
"""
import copy
import logging
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import lowbit  # noqa: E402

SEQUENCE = 16


class MeanPooledEncoder(torch.nn.Module):
    """Sentence embedding: the encoder's last hidden states averaged over the unmasked tokens."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1)


def test_minilm_class_encoder_quantized_and_compiled_by_lowbit():
    torch.manual_seed(0)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                     intermediate_size=1536, max_position_embeddings=512)
    float_model = MeanPooledEncoder(transformers.BertModel(config, add_pooling_layer=False)).eval()
    quantized = lowbit.quantize_model(copy.deepcopy(float_model), "w4g32")
    example = (torch.randint(0, 30522, (2, SEQUENCE)), torch.ones(2, SEQUENCE, dtype=torch.int64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = lowbit.compile(quantized, example, kernel="decode")
    assert len(compiled.manifest["layers"]) == 6 * 6  # q, k, v, attention out, FFN in, FFN out per layer
    assert [spec["name"] for spec in compiled.manifest["inputs"]] == ["input_ids", "attention_mask"]
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 30522, (3, SEQUENCE)).astype(np.int64)
    mask = np.ones((3, SEQUENCE), np.int64)
    mask[1, 7:] = 0  # a shorter sentence, padded
    ours = compiled(ids, mask)
    with torch.no_grad():
        eager = quantized(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        exact = float_model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    assert ours.shape == (3, 384)
    assert np.abs(ours - eager).max() <= 1e-5 * np.abs(eager).max()
    cosine = (ours * exact).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(exact, axis=1)
    assert (cosine >= 0.99).all(), cosine
