"""The INT8 tied head: one 8-bit copy of an embedding table that is also the output head, read by
MatMulNBits (logits) and GatherBlockQuantized (lookup), on a hand-built graph in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from distill import onnx_quant  # noqa: E402

VOCAB, WIDTH = 300, 128


def tied_lm(table: np.ndarray, name_nodes: bool = True):
    """ids -> Gather(table) -> MatMul(., Transpose(table)) -> logits: the tied-head pattern of
    Whisper's and SmolLM2's exports, with the lookup also exposed as an output."""
    nodes = [helper.make_node("Gather", ["E", "ids"], ["emb"], name="embed/Gather" if name_nodes else ""),
             helper.make_node("Transpose", ["E"], ["E_t"], name="head/Transpose", perm=[1, 0]),
             helper.make_node("MatMul", ["emb", "E_t"], ["logits"], name="head/MatMul")]
    graph = helper.make_graph(
        nodes, "tied", [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, [None, WIDTH]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, VOCAB])],
        initializer=[numpy_helper.from_array(table, "E")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model, ids):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"ids": ids})


def dequantize(q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    return ((q.astype(np.float32) - 128) * scales[..., None]).reshape(q.shape[0], -1)


def test_8bit_rows_round_trip_within_half_a_step():
    table = np.random.default_rng(0).standard_normal((VOCAB, WIDTH)).astype(np.float32)
    table[3] = 0.0  # an all-zero row must not divide by zero
    q, scales = onnx_quant.quantize_rows_8bit(table, 64)
    assert q.dtype == np.uint8 and q.shape == (VOCAB, WIDTH // 64, 64) and scales.shape == (VOCAB, 2)
    err = np.abs(dequantize(q, scales) - table).reshape(VOCAB, 2, 64)
    assert (err <= scales[..., None] / 2 + 1e-7).all()
    assert not dequantize(q, scales)[3].any()


def test_shared_head_stores_the_table_once_and_computes_the_same_function():
    table = np.random.default_rng(1).standard_normal((VOCAB, WIDTH)).astype(np.float32)
    ids = np.array([0, 7, 299, 7], dtype=np.int64)
    emb_ref, logits_ref = run(tied_lm(table), ids)
    model = tied_lm(table)
    assert onnx_quant.tied_tables(model) == {"E": {"gather": ["embed/Gather"], "head": ["head/MatMul"]}}
    shared = onnx_quant.share_tied_head(model)
    assert shared["E"]["bits"] == 8 and shared["E"]["head"] == 1 and shared["E"]["lookups"] == 1
    inits = {i.name: i for i in model.graph.initializer}
    assert "E" not in inits  # the fp32 table is gone: one 8-bit copy is all the file holds
    assert inits["E_Q8"].data_type == TensorProto.UINT8
    ops = {n.op_type for n in model.graph.node}
    assert {"MatMulNBits", "GatherBlockQuantized"} <= ops and not ops & {"Transpose", "DequantizeLinear"}
    emb, logits = run(model, ids)
    q, scales = onnx_quant.quantize_rows_8bit(table, onnx_quant.TIED_HEAD_BLOCK)
    np.testing.assert_array_equal(emb, dequantize(q, scales)[ids])  # the lookup is exact
    np.testing.assert_allclose(emb, emb_ref, atol=float(scales.max()))
    # the head quantizes its activations too (accuracy level 4): close, not equal
    assert np.corrcoef(logits.ravel(), logits_ref.ravel())[0, 1] > 0.999
    assert (logits.argmax(-1) == logits_ref.argmax(-1)).all()


def test_tables_it_cannot_share_are_left_alone():
    table = np.random.default_rng(2).standard_normal((VOCAB, WIDTH)).astype(np.float32)
    assert onnx_quant.tied_tables(tied_lm(table, name_nodes=False)) == {}  # unnamed: not matchable
    assert onnx_quant.tied_tables(tied_lm(table), block=256) == {}  # width not a multiple of the block
    model = tied_lm(table, name_nodes=False)
    assert onnx_quant.share_tied_head(model) == {}
    assert {i.name for i in model.graph.initializer} == {"E"}
