"""Does a Whisper student get faster in CTranslate2 with a smaller output vocabulary, untrained?

At batch 1 a 10-s-window student with 3/5-s buckets spends most of its CT2 time in the decoder, and
more than half of each decoder step's multiply-adds are the 51,865-way output projection. An
English model needs a fraction of those tokens. This bench slices the tied embedding / output
projection of a trained student to the tokens a text uses and measures what that buys, with no
retraining, on every real held-out clip (asterisk-en test, librivox-5, cards-5), batch 1, greedy,
CT2 int8, the same buckets for every student; the teacher's own CT2 weights run as the reference.

Kept per size N: every special and timestamp token (in their order, after the text tokens, so
Whisper's id rules hold in transformers and CT2), the single-byte tokens (any text stays
spellable), the N text tokens most frequent in the counted text, and the BPE parents of each (the
pruned tokenizer still encodes any text). Token frequencies are averaged over the sources, so the
student's training transcripts (asterisk-en train, tts-en-train) weigh as much as the general
corpus (text-en train). Nothing here reads an evaluation transcript.

    python bench/asr_vocab_prune.py --student runs/<run>/artifacts/<stage> --sizes 4000 12000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from collections import Counter
from pathlib import Path

import asr_vs_faster_whisper as peers  # the peer bench's clips, exports and timed pass
from asr_window_buckets import scores

OUT = peers.OUT
ROOT = peers.ROOT
FIRST_SPECIAL = 50256  # whisper multilingual: '' then <|endoftext|>, specials, timestamps
ID_FIELDS = ("decoder_start_token_id", "bos_token_id", "eos_token_id", "pad_token_id",
             "no_timestamps_token_id", "prev_sot_token_id")
ID_LISTS = ("suppress_tokens", "begin_suppress_tokens")


def frequencies(tokenizer, sources: list[list[str]]) -> Counter:
    """Per token id, its relative frequency averaged over the sources; texts tokenized as a
    transcript is (whitespace collapsed, a leading space)."""
    freq: Counter = Counter()
    for texts in sources:
        counts: Counter = Counter()
        for ids in tokenizer([" " + " ".join(t.split()) for t in texts if t.strip()],
                             add_special_tokens=False).input_ids:
            counts.update(ids)
        total = sum(counts.values())
        for i, c in counts.items():
            freq[i] += c / total / len(sources)
    return freq


def select(freq: Counter, size: int, vocab: dict[str, int], merges: list[tuple[str, str]], n_total: int) -> list[int]:
    """Old ids kept, ascending (see the module doc)."""
    token_of = {i: t for t, i in vocab.items()}
    keep = set(range(FIRST_SPECIAL, n_total)) | {i for t, i in vocab.items() if len(t) == 1}
    text = [i for i, _ in sorted(freq.items(), key=lambda kv: (-kv[1], kv[0])) if i < FIRST_SPECIAL]
    keep |= set(text[:size])
    parents = {}
    for a, b in merges:
        parents.setdefault(a + b, (a, b))
    todo = [token_of[i] for i in keep if i < FIRST_SPECIAL]
    while todo:
        for part in parents.get(todo.pop(), ()):
            if vocab[part] not in keep:
                keep.add(vocab[part])
                todo.append(part)
    return sorted(keep)


def remap(cfg: dict, new_id: dict[int, int]) -> dict:
    """Token ids of a config dict in the pruned numbering (suppressed ids no longer kept drop)."""
    out = {k: new_id[v] for k, v in cfg.items() if k in ID_FIELDS and v is not None}
    out.update({k: [new_id[i] for i in v if i in new_id] for k, v in cfg.items() if k in ID_LISTS and v})
    if cfg.get("forced_decoder_ids"):
        out["forced_decoder_ids"] = [[p, None if i is None else new_id[i]] for p, i in cfg["forced_decoder_ids"]]
    for key in ("lang_to_id", "task_to_id"):
        if cfg.get(key):
            out[key] = {name: new_id[i] for name, i in cfg[key].items()}
    return out


def pruned_student(src: Path, out: Path, keep: list[int], vocab: dict[str, int], merges: list) -> None:
    """An HF Whisper directory with the kept rows and a renumbered tokenizer (vocab.json,
    merges.txt, added tokens); transformers rebuilds tokenizer.json from them."""
    import torch
    from torch import nn
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    new_id = {o: n for n, o in enumerate(keep)}
    out.mkdir(parents=True, exist_ok=True)
    model = WhisperForConditionalGeneration.from_pretrained(src)
    old = model.get_input_embeddings()
    emb = nn.Embedding(len(keep), old.embedding_dim)
    emb.weight.data = old.weight.data[torch.tensor(keep)].clone()
    model.set_input_embeddings(emb)
    model.proj_out = nn.Linear(old.embedding_dim, len(keep), bias=False)
    model.config.vocab_size = len(keep)
    model.tie_weights()
    for key, value in remap(model.config.to_dict(), new_id).items():
        setattr(model.config, key, value)
    for key, value in remap(model.generation_config.to_dict(), new_id).items():
        setattr(model.generation_config, key, value)
    model.save_pretrained(out, safe_serialization=True)
    kept = {t for t, i in vocab.items() if i in new_id}
    (out / "vocab.json").write_text(json.dumps({t: new_id[i] for t, i in vocab.items() if i in new_id}))
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(
        f"{a} {b}\n" for a, b in merges if a in kept and b in kept and a + b in kept), encoding="utf-8")
    added = json.loads((src / "added_tokens.json").read_text())
    (out / "added_tokens.json").write_text(json.dumps({t: new_id[i] for t, i in added.items()}))
    cfg = json.loads((src / "tokenizer_config.json").read_text())
    cfg["added_tokens_decoder"] = {str(new_id[int(i)]): v for i, v in cfg["added_tokens_decoder"].items()}
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    for name in ("special_tokens_map.json", "normalizer.json", "preprocessor_config.json"):
        shutil.copyfile(src / name, out / name)
    WhisperProcessor.from_pretrained(out).save_pretrained(out)  # writes the fast tokenizer.json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", required=True, help="a multilingual Whisper student directory")
    ap.add_argument("--sizes", type=int, nargs="+", default=[4000, 12000], help="text tokens kept")
    ap.add_argument("--buckets", type=int, nargs="+", default=[3, 5])
    ap.add_argument("--padding", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="asr_vocab_prune")
    args = ap.parse_args()

    import torch

    from distill import provenance, speech
    from distill.assets import load_dataset
    from distill.assets.models import whisper_ct2_dir
    from distill.evaluation import ct2_models
    from distill.whisper_tokenizer import missing_merges, whisper_processor, with_merges

    torch.set_num_threads(args.threads)
    student = Path(args.student)
    tokenizer = whisper_processor(student).tokenizer  # encodes as the model was trained
    vocab = json.loads((student / "vocab.json").read_text())
    lines = (student / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(x.split(" ")) for x in lines if x and not x.startswith("#")]
    merges = with_merges(vocab, merges, missing_merges(vocab, merges))
    sources = [[u.text for u in speech.read_utterances([a], "train", None)]
               for a in ("asset:asterisk-en", "asset:tts-en-train")]
    sources.append(list(load_dataset("text-en", split="train")["text"]))
    freq = frequencies(tokenizer, sources)
    n_total = json.loads((student / "config.json").read_text())["vocab_size"]

    items = peers.clips(None)
    audio_s = sum(it["seconds"] for it in items)
    systems, rows = {}, {}
    teacher = ct2_models.load_ct2(str(whisper_ct2_dir("base", peers.WORK / "whisper-base-ct2")), "cpu",
                                  compute_type="int8")
    systems["teacher-ct2-int8"], rows["teacher-ct2-int8"] = teacher, n_total
    full, _ = peers.load_adapter(peers.ct2_export(student, f"ct2-int8-{student.name}"))
    systems["student (all rows)"], rows["student (all rows)"] = full, n_total
    for size in args.sizes:
        keep = select(freq, size, vocab, merges, n_total)
        name = f"vocab-{size}-{student.name}"
        if not (peers.WORK / name / "model.safetensors").is_file():
            pruned_student(student, peers.WORK / name, keep, vocab, merges)
        systems[f"student, {size} text tokens"], _ = peers.load_adapter(peers.ct2_export(peers.WORK / name, f"ct2-int8-{name}"))
        rows[f"student, {size} text tokens"] = len(keep)
    for name in list(systems):
        if name != "teacher-ct2-int8":
            systems[name] = dataclasses.replace(systems[name], window_buckets=tuple(args.buckets),
                                                bucket_padding_s=args.padding)
    result = {"command": peers.command_line("asr_vocab_prune.py", args), "git": provenance.git_state(),
              "versions": provenance.versions(), "machine": provenance.machine("cpu"), "created": provenance.now(),
              "student": str(student.relative_to(ROOT) if student.is_relative_to(ROOT) else student),
              "counted": {"sources": ["asterisk-en train", "tts-en-train train", "text-en train"],
                          "texts": [len(s) for s in sources]},
              "conditions": {"batch_size": 1, "decoding": "greedy", "threads": args.threads, "device": "cpu",
                             "compute_type": full.dtype, "buckets": args.buckets, "padding_s": args.padding},
              "clips": {"n": len(items), "audio_s": round(audio_s, 2)}, "systems": {}}
    texts = {}
    for name, system in systems.items():
        timing, texts[name] = peers.timed_pass(system, items, audio_s, name)
        result["systems"][name] = {"output_rows": rows[name], **timing, "pooled": scores(texts[name], items),
                                   "asterisk-en": scores(texts[name], items, lambda it: it["task"] == "asterisk-en")}
        print(json.dumps({"system": name, "rtfx": timing["rtfx"], "wer": result["systems"][name]["pooled"]["wer"]}),
              flush=True)
    peers.write_outputs(args.name, result, items, texts, report(result))


def report(res: dict) -> str:
    base = res["systems"]["student (all rows)"]
    lines = []
    for name, s in res["systems"].items():
        p, a = s["pooled"], s["asterisk-en"]
        lines.append(f"| {name} | {s['output_rows']} | {100 * p['wer']:.2f} ({p['errors']}/{p['ref_words']}) | "
                     f"{100 * a['wer']:.2f} | {p['loops']} | {s['rtfx']:.2f} | {s['rtfx'] / base['rtfx']:.2f} |")
    c = res["conditions"]
    return f"""# Output-vocabulary pruning of a Whisper student in CTranslate2, untrained

Command: `{res['command']}` ({res['created']}, commit {res['git'].get('sha', '?')[:10]}{' dirty' if res['git'].get('dirty') else ''}).
Student: `{res['student']}`. {res['clips']['n']} real held-out clips ({res['clips']['audio_s']} s), batch 1, greedy,
{c['threads']} threads, CT2 {c['compute_type']}, students with buckets {c['buckets']} s and {c['padding_s']:g} s padding, one pass each
after a warm-up clip (load averages in the JSON). Token frequencies from {', '.join(res['counted']['sources'])}.

| system | output rows | WER % pooled (errors/words) | WER % asterisk-en | loops | RTFx | vs all rows |
|---|---|---|---|---|---|---|
{chr(10).join(lines)}

Raw transcripts: `{Path(res['command'].split('--name ')[-1].split()[0]).name}_samples.jsonl`.
"""


if __name__ == "__main__":
    main()
