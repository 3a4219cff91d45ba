"""ONNX Runtime quantization and graph optimisation of exported graphs, in place.

- INT8 dynamic: weights INT8 per output channel, activations quantized per call (u8). Kernels
  follow this CPU's best instruction set (AVX512-VNNI > AVX512 > AVX2, read from /proc/cpuinfo):
  without VNNI, u8 x s8 products can saturate 16-bit accumulators, so AVX2 gets u8 weights.
- INT8 static: activations quantized with ranges measured on calibration inputs (MinMax, QDQ).
  Graphs holding `If` subgraphs (Whisper's merged decoder) cannot expose their inner tensors to the
  calibrator; they get dynamic INT8 and the manifest says so per graph.
- INT4: weight-only MatMulNBits, block-wise (RTN, HQQ, or GPTQ with calibration on single-graph
  LMs); the embedding table becomes GatherBlockQuantized (RTN, whatever the MatMul method). `accuracy_level` 4 = the kernel
  quantizes activations to INT8 per block (ORT's fast CPU path).
A tied output head (Whisper, SmolLM2: MatMul(x, Transpose(embedding))) is untied for INT4 so the head
weight is an initializer MatMulNBits can reach (otherwise it stays fp32 and INT4 is barely smaller).
INT8 keeps one copy: the table becomes 8-bit blocks read by both the head (MatMulNBits) and the
lookup (GatherBlockQuantized). The quantizer's own INT8 path dequantized the whole table at every
decoding step (Whisper-base: 26.5M values per token, the largest single cost at batch 1).
Convolutions stay fp32 under INT8 dynamic: ORT's ConvInteger ran Whisper's two input convolutions
about 3x slower than its fp32 Conv on this CPU (0.9M weights; 2.7 MB more on disk).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from distill.errors import DistillError

logger = logging.getLogger(__name__)

INT4_ACCURACY_LEVEL = 4
TIED_HEAD_BLOCK = 64  # weights per scale of the shared 8-bit table (divides 384, 512, 576, 768, 1280)
INT8_DYNAMIC_OPS = ("MatMul", "Gather")  # not Conv: see the module docstring
MERGED = "decoder_model_merged.onnx"


def model_config(path) -> dict:
    """The HF config.json of a model directory as a dict ({} when there is none)."""
    cfg = Path(path) / "config.json"
    return json.loads(cfg.read_text()) if cfg.is_file() else {}


def model_type(path) -> str | None:
    return model_config(path).get("model_type")


def isa() -> str:
    """The best INT8 instruction set ORT's CPU kernels can use here."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo")
                      if line.startswith("flags")), [])
    except OSError:
        flags = []
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        return "avx512_vnni" if "avx512_vnni" in flags else "avx_vnni"
    if "avx512f" in flags:
        return "avx512"
    return "avx2" if "avx2" in flags else "generic"


def precision(spec) -> dict:
    """What the exported graphs really compute in: the manifest's `precision`, the record's dtype."""
    found = _precision(spec)
    if spec.keep_float and spec.quantize != "none":
        found["kept_float"] = list(spec.keep_float)  # nodes matching these stay fp32
    return found


def _precision(spec) -> dict:
    if spec.quantize == "none":
        return {"dtype": "float32", "weights": "float32", "activations": "float32", "bits": 32}
    if spec.quantize == "int4":
        return {"dtype": f"int4-{spec.int4_method}-b{spec.block_size}", "bits": 4,
                "weights": f"int4 block {spec.block_size}: MatMul weights ({spec.int4_method}), "
                           "embedding table (rtn, GatherBlockQuantized)",
                "activations": f"int8 per block inside MatMulNBits (accuracy_level {INT4_ACCURACY_LEVEL})"}
    static = spec.quantize == "int8-static"
    return {"dtype": spec.quantize, "bits": 8,
            "weights": "int8 per-channel" if spec.per_channel else "int8 per-tensor",
            "activations": "uint8 static ranges (calibrated)" if static else "uint8 dynamic (per call)"}


# ------------------------------------------------------------------------------- calibration
def calibration_inputs(spec, source) -> dict:
    """Raw calibration data (audio or token blocks), checked for size before anything is written."""
    cal = spec.calibration
    if model_type(source.path) == "whisper":
        from transformers import WhisperProcessor

        from distill.speech import load_wave, read_utterances

        utts = read_utterances(cal.source, cal.split, cal.n)
        processor = WhisperProcessor.from_pretrained(source.path)
        feats = []
        for utt in utts:
            try:
                wave, _ = load_wave(utt.audio_path)
            except Exception:  # noqa: BLE001 - an undecodable clip is just not used
                continue
            feats.append(processor.feature_extractor(wave, sampling_rate=16000,
                                                     return_tensors="np").input_features)
        data = {"input_features": feats}
    else:
        from transformers import AutoTokenizer

        from distill.data import pack, read_texts, tokenize

        tok = AutoTokenizer.from_pretrained(source.path)
        ids = tokenize(read_texts(cal.source, cal.split), tok, cal.n * cal.seq_len)
        blocks = pack(ids, cal.seq_len)[: cal.n]
        data = {"input_ids": [b.numpy()[None, :].astype(np.int64) for b in blocks]}
    got = len(next(iter(data.values())))
    if got < cal.n:
        raise DistillError(f"calibration set too small: '{cal.source}' (split {cal.split}) gave {got} "
                           f"usable items, {cal.n} asked", "use a larger source/split or a smaller "
                           "calibration.n (at least 8)")
    return data


def _feeds(graph: Path, data: dict) -> list[dict]:
    """Session inputs for one graph from the calibration data (empty KV cache for LMs)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in sess.get_inputs()}
    feeds = []
    if "input_features" in inputs:
        return [{"input_features": f.astype(np.float32)} for f in data["input_features"]]
    for ids in data["input_ids"]:
        length = ids.shape[1]
        feed = {"input_ids": ids}
        if "attention_mask" in inputs:
            feed["attention_mask"] = np.ones_like(ids)
        if "position_ids" in inputs:
            feed["position_ids"] = np.arange(length, dtype=np.int64)[None, :]
        for name, meta in inputs.items():
            if name.startswith("past_key_values"):
                shape = [1, *(d if isinstance(d, int) else 0 for d in meta.shape[1:])]
                feed[name] = np.zeros(shape, dtype=np.float32)
        feeds.append(feed)
    return feeds


class _Reader:
    """onnxruntime CalibrationDataReader over a list of feeds (re-iterable for GPTQ's deepcopy)."""

    def __init__(self, feeds: list[dict]):
        self.feeds, self.pos = feeds, 0

    def get_next(self):
        if self.pos >= len(self.feeds):
            return None
        self.pos += 1
        return self.feeds[self.pos - 1]

    def rewind(self):
        self.pos = 0

    def __iter__(self):
        return iter(self.feeds)


# ------------------------------------------------------------------------------ graph surgery
def _has_subgraphs(model) -> bool:
    import onnx

    return any(a.type == onnx.AttributeProto.GRAPH for n in model.graph.node for a in n.attribute)


def _walk(graph):
    import onnx

    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _walk(attr.g)


def untie_head(model) -> list[str]:
    """Replace every Transpose(initializer) by a transposed initializer (the tied output head), so
    the MatMul that reads it can be quantized. Returns the new initializer names."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    made = []
    for graph in _walk(model.graph):
        keep = []
        for node in graph.node:
            src = node.input[0] if node.op_type == "Transpose" and node.input else None
            if src in inits:
                out = node.output[0]
                if out not in made:
                    perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
                    arr = np.transpose(numpy_helper.to_array(inits[src]), perm)
                    model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(arr), out))
                    made.append(out)
                continue  # the node is gone: its output is now an initializer of the outer graph
            keep.append(node)
        del graph.node[:]
        graph.node.extend(keep)
    return made


def tied_tables(model, block: int = TIED_HEAD_BLOCK) -> dict[str, dict[str, list[str]]]:
    """Embedding tables that are also the output head: initializer -> the names of the Gather nodes
    that look rows up and of the MatMul(x, Transpose(table)) nodes that compute logits. Only tables
    `share_tied_head` can take: 2-D, width a multiple of `block`, every user node named (nodes are
    matched by name across the quantizer, which keeps the names of the nodes it skips)."""
    inits = {i.name for i in model.graph.initializer
             if len(i.dims) == 2 and i.dims[1] % block == 0}
    transposed = {n.output[0]: n.input[0] for g in _walk(model.graph) for n in g.node
                  if n.op_type == "Transpose" and n.input and n.input[0] in inits}
    found: dict[str, dict[str, list[str]]] = {}
    for graph in _walk(model.graph):
        for node in graph.node:
            if node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in transposed:
                found.setdefault(transposed[node.input[1]], {"gather": [], "head": []})["head"].append(node.name)
    for graph in _walk(model.graph):
        for node in graph.node:
            if node.op_type == "Gather" and node.input and node.input[0] in found:
                found[node.input[0]]["gather"].append(node.name)
    return {name: uses for name, uses in found.items()
            if uses["gather"] and all(uses["gather"]) and all(uses["head"])}


def quantize_rows_8bit(table: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric 8-bit blocks along each row of `table` [V, H]: (uint8 [V, H/block, block] with
    zero point 128, fp32 scales [V, H/block]), the layout MatMulNBits reads as its B input."""
    rows, cols = table.shape
    blocks = table.reshape(rows, cols // block, block).astype(np.float32)
    scales = np.abs(blocks).max(axis=-1) / 127.0
    scales[scales == 0] = 1.0
    q = np.clip(np.rint(blocks / scales[..., None]), -127, 127) + 128
    return q.astype(np.uint8), scales.astype(np.float32)


def share_tied_head(model, block: int = TIED_HEAD_BLOCK) -> dict:
    """Store each tied table once as 8-bit blocks: the head MatMul becomes MatMulNBits (accuracy
    level 4: INT8 activations per block, the fast CPU path) and the lookup GatherBlockQuantized,
    both reading the same bytes (the Gather through a Reshape that ORT folds at load). Returns
    what was shared, per table (see `tied_tables` for which qualify)."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    shared = {}
    for name, uses in tied_tables(model, block).items():
        table = numpy_helper.to_array(inits[name])
        rows, cols = table.shape
        q, scales = quantize_rows_8bit(table, block)
        qname, sname, rname = f"{name}_Q8", f"{name}_Q8_scales", f"{name}_Q8_rows"
        model.graph.initializer.extend([numpy_helper.from_array(q, qname),
                                        numpy_helper.from_array(scales, sname),
                                        numpy_helper.from_array(np.array([rows, cols], np.int64), f"{rname}_shape")])
        model.graph.node.insert(0, helper.make_node("Reshape", [qname, f"{rname}_shape"], [rname],
                                                    name=f"{name}_Q8_Reshape"))
        dead = set()
        for graph in _walk(model.graph):
            for k, node in enumerate(graph.node):
                if node.name in uses["head"] and node.op_type == "MatMul":
                    dead.add(node.input[1])
                    graph.node[k].CopyFrom(helper.make_node(
                        "MatMulNBits", [node.input[0], qname, sname], list(node.output), name=node.name,
                        domain="com.microsoft", K=cols, N=rows, bits=8, block_size=block,
                        accuracy_level=INT4_ACCURACY_LEVEL))
                elif node.name in uses["gather"] and node.op_type == "Gather" and node.input[0] == name:
                    graph.node[k].CopyFrom(helper.make_node(
                        "GatherBlockQuantized", [rname, node.input[1], sname], list(node.output),
                        name=node.name, domain="com.microsoft", bits=8, block_size=block,
                        gather_axis=0, quantize_axis=1))
        for graph in _walk(model.graph):  # the Transpose(table) nodes now feed nothing
            keep = [n for n in graph.node if not (n.op_type == "Transpose" and n.output[0] in dead)]
            del graph.node[:]
            graph.node.extend(keep)
        if not any(name in n.input for g in _walk(model.graph) for n in g.node):
            model.graph.initializer.remove(inits[name])
        shared[name] = {"rows": rows, "cols": cols, "bits": 8, "block_size": block,
                        "head": len(uses["head"]), "lookups": len(uses["gather"])}
    if shared and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return shared


def op_counts(model) -> dict[str, int]:
    counts: Counter = Counter()
    for graph in _walk(model.graph):
        counts.update(n.op_type for n in graph.node)
    return dict(counts)


# ------------------------------------------------------------------------------ quantization
def kept_float(model, patterns: list[str]) -> list[str]:
    """Names of the nodes (subgraphs included) that `keep_float` leaves unquantized."""
    return [n.name for g in _walk(model.graph) for n in g.node if any(p in n.name for p in patterns)]


def _int8_dynamic(src: str, dst: str, per_channel: bool, chip: str, exclude: list[str]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    weight = QuantType.QUInt8 if chip == "avx2" else QuantType.QInt8
    quantize_dynamic(src, dst, per_channel=per_channel, reduce_range=False, weight_type=weight,
                     op_types_to_quantize=list(INT8_DYNAMIC_OPS), nodes_to_exclude=exclude,
                     extra_options={"EnableSubgraph": True})


def _int8_static(src: str, dst: str, per_channel: bool, feeds: list[dict], exclude: list[str]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(src, dst, _Reader(feeds), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=exclude,
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})


def _int4(model, spec, feeds: list[dict] | None, exclude: list[str]):
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        GPTQWeightOnlyQuantConfig,
        HQQWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    if spec.int4_method == "rtn":
        config = DefaultWeightOnlyQuantConfig(
            block_size=spec.block_size, is_symmetric=True, accuracy_level=INT4_ACCURACY_LEVEL,
            op_types_to_quantize=("MatMul", "Gather"), quant_axes=(("MatMul", 0), ("Gather", 1)))
    elif spec.int4_method == "hqq":
        config = HQQWeightOnlyQuantConfig(block_size=spec.block_size, bits=4)
    else:
        config = GPTQWeightOnlyQuantConfig(calibration_data_reader=_Reader(feeds),
                                           block_size=spec.block_size)
    quantizer = MatMulNBitsQuantizer(model, block_size=spec.block_size, is_symmetric=True,
                                     accuracy_level=INT4_ACCURACY_LEVEL, nodes_to_exclude=exclude,
                                     algo_config=config)
    quantizer.process()
    model = quantizer.model.model
    if spec.int4_method != "rtn":  # HQQ/GPTQ reach MatMul only: the embedding table gets RTN 4-bit
        table = DefaultWeightOnlyQuantConfig(block_size=spec.block_size, is_symmetric=True,
                                             op_types_to_quantize=("Gather",), quant_axes=(("Gather", 1),))
        second = MatMulNBitsQuantizer(model, block_size=spec.block_size, is_symmetric=True,
                                      nodes_to_exclude=exclude, algo_config=table)
        second.process()
        model = second.model.model
    return model


def quantize(out: Path, graphs: list[str], spec, calibration: dict | None) -> dict:
    """Quantize each graph of `out` in place; returns what was done, per graph."""
    import onnx

    chip = isa()
    done: dict = {"method": spec.quantize, "graphs": {}}
    if spec.quantize.startswith("int8"):
        done.update(per_channel=spec.per_channel, isa=chip,
                    weight_type="uint8" if chip == "avx2" else "int8")
    else:
        done.update(block_size=spec.block_size, algorithm=spec.int4_method,
                    accuracy_level=INT4_ACCURACY_LEVEL)
    for name in graphs:
        path = out / name
        model = onnx.load(str(path))
        if _has_subgraphs(model) and spec.int4_method == "gptq" and spec.quantize == "int4":
            raise DistillError(f"int4 gptq cannot quantize '{name}' (a merged decoder with If "
                               "subgraphs)", "use int4_method: rtn or hqq for Whisper")
        # INT4: the head needs its own initializer to become MatMulNBits. INT8 keeps one copy of a
        # tied table (share_tied_head after the quantizer), where an untied INT8 head would add a
        # second vocab x hidden matrix to the file.
        untied = untie_head(model) if spec.quantize == "int4" else []
        exclude = kept_float(model, spec.keep_float)
        tmp = path.with_name(f".{name}.tmp")
        how, shared = spec.quantize, {}
        if spec.quantize == "int4":
            feeds = _feeds(path, calibration) if spec.int4_method == "gptq" else None
            onnx.save(_int4(model, spec, feeds, exclude), str(tmp))
        else:
            # the tied table is left to share_tied_head, after the quantizer
            tied = [n for uses in tied_tables(model).values() for n in uses["head"] + uses["gather"]]
            onnx.save(model, str(tmp))
            if spec.quantize == "int8-static" and not _has_subgraphs(model):
                _int8_static(str(tmp), str(path), spec.per_channel, _feeds(tmp, calibration), exclude + tied)
            else:
                if spec.quantize == "int8-static":
                    how = "int8-dynamic (If subgraphs: static calibration cannot observe them)"
                _int8_dynamic(str(tmp), str(path), spec.per_channel, chip, exclude + tied)
            if tied:
                quantized = onnx.load(str(path))
                shared = share_tied_head(quantized)
                onnx.save(quantized, str(path))
        if tmp.exists() and spec.quantize == "int4":
            tmp.replace(path)
        tmp.unlink(missing_ok=True)
        for leftover in path.parent.glob(f"{name}_data"):
            leftover.unlink()
        done["graphs"][name] = {"method": how, "untied": untied, "shared_head": shared,
                                "bytes": path.stat().st_size,
                                "kept_float": {"patterns": spec.keep_float, "nodes": len(exclude)}}
        logger.info("quantized %s: %s, %.1f MB", name, how, path.stat().st_size / 1e6)
    return done


def optimize(out: Path, graphs: list[str]) -> dict:
    """ONNX Runtime offline graph optimisation at the extended level (fusions such as
    LayerNormalization, Gelu/BiasGelu, MatMul+Add, SkipLayerNorm; no hardware-specific layouts, so
    the saved graph stays portable across CPUs), saved in place."""
    import onnx
    import onnxruntime as ort

    report = {"level": "ORT_ENABLE_EXTENDED", "graphs": {}}
    for name in graphs:
        path = out / name
        before = op_counts(onnx.load(str(path), load_external_data=False))
        tmp = path.with_name(f".{name}.opt")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(tmp)
        # Folding Transpose(embedding) would store a second fp32 copy of a tied head on disk.
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                             disabled_optimizers=["ConstantFolding"])
        after = op_counts(onnx.load(str(tmp), load_external_data=False))
        tmp.replace(path)
        fused = {op: n for op, n in after.items() if n > before.get(op, 0)}
        report["graphs"][name] = {"nodes_before": sum(before.values()), "nodes_after": sum(after.values()),
                                  "new_ops": fused}
        logger.info("optimised %s: %d -> %d nodes, new %s", name, sum(before.values()),
                    sum(after.values()), fused)
    return report
