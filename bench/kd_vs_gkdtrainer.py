"""KD training-step tokens/s end to end: this workbench's distill stage vs TRL's full GKDTrainer.

Both sides train the same random Qwen3-style student (3 layers) from the same random teacher
(6 layers) at SmolLM2's real vocabulary (49,152, its tokenizer), on the same token batches
(`text-en` packed by the stage's own `text_blocks`), with the same optimizer (torch AdamW, same lr,
constant schedule, grad-norm clip 1.0), fp32, the same torch threads and the same number of steps.

- distill: `runner.run` on a generated recipe (kind: distill, loss forward_kl), i.e. the real
  stage and its shared training loop; nothing in `distill/` is changed. Step time runs from the
  stage's step function being called to the optimizer step returning (observed by wrapping the
  step function and a global optimizer step hook).
- trl: `GKDTrainer` with lmbda=0 (no on-policy generation: pure off-policy KD, as the stage does)
  and beta=0 (its generalized JSD is then exactly `F.kl_div(student_logp, teacher_logp,
  log_target=True)` = KL(teacher || student), our forward_kl). Step time from `on_step_begin` to
  `on_step_end` of a TrainerCallback, so Trainer setup, logging and data loading are excluded.
  A thin subclass only reads rows in order (SequentialSampler) and records each step's loss.

Labels on the TRL side are the input ids with position 0 set to -100: position 0 is never a target
after the causal shift, and it makes the Trainer's `num_items_in_batch` (it counts unshifted
labels) equal the B x (S-1) scored tokens, so both sides report the same mean (with plain
labels = input_ids, GKDTrainer divides by B x S and its loss is (S-1)/S of the per-token mean).

Each side runs in its own subprocess (separate peak RSS); by default in the order trl, distill,
distill, trl so machine-load drift hits both alike. Tokens/s = B x S x measured steps / summed step
time, after the warm-up steps; also per median step and per process CPU-second, which other jobs'
load on a shared machine moves less.
  DISTILL_CACHE=... python bench/kd_vs_gkdtrainer.py
  -> bench/results/kd_vs_gkdtrainer.json and .md
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

THREADS = int(os.environ.get("BENCH_THREADS", "2"))
VOCAB, SEQ, BATCH, WARMUP, MEASURED, LR, SEED = 49_152, 256, 4, 2, 8, 1e-4, 0
TOKENIZER = "asset:smollm2-135m-instruct"  # 49,152 tokens, the vocabulary the random models use
DATA_TOKENS = 64 * SEQ  # 64 blocks to shuffle from; the run reads (WARMUP + MEASURED) x BATCH of them
QWEN3 = dict(model_type="qwen3", vocab_size=VOCAB, hidden_size=256, intermediate_size=768, num_attention_heads=4,
             num_key_value_heads=2, head_dim=64, max_position_embeddings=512, tie_word_embeddings=True)
TEACHER = {**QWEN3, "num_hidden_layers": 6}
STUDENT = {**QWEN3, "num_hidden_layers": 3}
RESULTS = Path(__file__).resolve().parent / "results"


def max_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def weights_sha(model) -> str:
    """sha256 of every parameter's bytes in name order: proves both sides start from the same weights."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class StepClock:
    """Per-step wall times (begin -> end), the batches seen and the loss of each step."""

    def __init__(self) -> None:
        self.begins: list[float] = []
        self.ends: list[float] = []
        self.cpu: list[float] = []  # process CPU seconds (all threads) per step: less load-sensitive
        self.losses: list[float] = []
        self.batches: list = []
        self.rss_before_training = 0.0
        self.rss_after_training = 0.0

    def begin(self) -> None:
        if not self.begins:
            self.rss_before_training = max_rss_mib()
        self.begins.append(time.perf_counter())
        self.cpu.append(-time.process_time())

    def end(self) -> None:
        self.ends.append(time.perf_counter())
        self.cpu[-1] += time.process_time()
        self.rss_after_training = max_rss_mib()

    def summary(self) -> dict:
        steps = [e - b for b, e in zip(self.begins, self.ends)]
        timed = steps[WARMUP:]
        # end-to-end loop time between the last warm-up step's end and the last step's end: also
        # counts what each loop does between steps (logging, data, callbacks)
        loop = self.ends[-1] - self.ends[WARMUP - 1]
        tokens = BATCH * SEQ * len(timed)
        return {"steps_run": len(steps), "step_seconds": [round(s, 3) for s in steps],
                "step_cpu_seconds": [round(s, 3) for s in self.cpu],
                "tok_per_s": round(tokens / sum(timed), 1), "loop_tok_per_s": round(tokens / loop, 1),
                "tok_per_cpu_s": round(tokens / sum(self.cpu[WARMUP:]), 1),
                "losses": self.losses, "peak_rss_mib_before_training": self.rss_before_training,
                "peak_rss_mib_after_training": self.rss_after_training}


# ------------------------------------------------------------------------------------ parent side
def data_spec(work: Path) -> dict:
    return {"source": str(work / "train.txt"), "seq_len": SEQ, "max_tokens": DATA_TOKENS, "heldout_fraction": 0.0}


def prepare(work: Path) -> None:
    """The corpus file, the recipe, and the exact batches the stage will read (from its own code)."""
    import torch
    import yaml

    from distill.data import read_texts, text_blocks
    from distill.models import load_tokenizer
    from distill.recipe import ModelRef, TextData

    docs, chars = [], 0
    for doc in read_texts("asset:text-en", "train"):
        docs.append(doc)
        chars += len(doc)
        if chars > 8 * DATA_TOKENS:  # ~4 chars per token, with room to spare
            break
    (work / "train.txt").write_text("\n\n".join(docs) + "\n")
    tok = load_tokenizer(ModelRef(config=TEACHER, tokenizer=TOKENIZER), None)
    blocks, _ = text_blocks(TextData(**data_spec(work)), tok, SEED)
    steps = WARMUP + MEASURED
    torch.save(torch.stack([blocks.batch(i * BATCH, BATCH) for i in range(steps)]), work / "batches.pt")
    stage = {
        "kind": "distill", "name": "kd",
        "teacher": {"config": TEACHER, "tokenizer": TOKENIZER},
        "student": {"init": "config", "model": {"config": STUDENT, "tokenizer": TOKENIZER}},
        "data": data_spec(work),
        "loss": {"kind": "forward_kl", "temperature": 1.0, "kd_weight": 1.0, "ce_weight": 0.0},
        "train": {"steps": steps, "batch_size": BATCH, "lr": LR, "warmup_steps": 0, "min_lr_ratio": 1.0,
                  "max_grad_norm": 1.0, "weight_decay": 0.0, "dtype": "float32", "log_every": 1,
                  "checkpoint_every": 10_000},
    }
    recipe = {"name": "kd-vs-gkdtrainer", "seed": SEED, "output_dir": str(work / "runs"), "stages": [stage]}
    (work / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))


def run_side(side: str, work: Path, tag: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS),
           "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = work / f"{tag}.json"
    load_before = os.getloadavg()
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--side", side, "--work", str(work), "--out", str(out)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{side} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    result = json.loads(out.read_text())
    result.update(process_seconds=round(time.perf_counter() - t, 1),
                  load_avg_before=[round(x, 2) for x in load_before],
                  load_avg_after=[round(x, 2) for x in os.getloadavg()])
    print(f"{tag}: {result['tok_per_s']} tok/s, loss[0] {result['losses'][0]:.6f}", file=sys.stderr)
    return result


# ------------------------------------------------------------------------------------- child sides
def child_distill(work: Path, clock: StepClock) -> dict:
    """The real stage via runner.run; only observed (step function wrapped, optimizer hook)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from distill import models, runner, training

    shas: list[str] = []
    load = models.load_causal_lm

    def load_and_hash(*args, **kwargs):
        model, tok = load(*args, **kwargs)
        shas.append(weights_sha(model))  # teacher first, then the student (init: config)
        return model, tok

    train = training.train

    def observed_train(modules, step_fn, *args, **kwargs):
        def step(batch, *rest):
            clock.begin()
            clock.batches.append(batch.clone())
            loss, metrics = step_fn(batch, *rest)
            clock.losses.append(metrics["loss"])
            return loss, metrics

        return train(modules, step, *args, **kwargs)

    models.load_causal_lm, training.train = load_and_hash, observed_train  # the stage looks both up per call
    register_optimizer_step_post_hook(lambda *_: clock.end())
    result = runner.run(work / "recipe.yaml", [])
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r["tok_per_s"] for r in rows if "tok_per_s" in r][WARMUP:]  # the stage's own metric
    return {"teacher_sha": shas[0], "student_sha": shas[1],
            "stage_logged_tok_per_s": round(len(logged) / sum(1 / x for x in logged), 1)}


def child_trl(work: Path, clock: StepClock) -> dict:
    import torch
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers import AutoTokenizer, TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from distill.models import build_from_config, resolve_source

    teacher, student = build_from_config(TEACHER, SEED), build_from_config(STUDENT, SEED + 1)  # the stage's seeds
    shas = {"teacher_sha": weights_sha(teacher), "student_sha": weights_sha(student)}
    tok = AutoTokenizer.from_pretrained(resolve_source(TOKENIZER))
    tok.pad_token = tok.pad_token or tok.eos_token
    batches = torch.load(work / "batches.pt")
    dataset = Dataset.from_dict({"input_ids": batches.reshape(-1, SEQ).tolist()})
    items: list = []

    def collate(rows: list[dict]) -> dict:
        ids = torch.tensor([r["input_ids"] for r in rows])
        clock.batches.append(ids.clone())
        labels = ids.clone()
        labels[:, 0] = -100  # never a target after the shift; makes num_items_in_batch = B x (S-1)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}

    class OrderedGKD(GKDTrainer):
        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            clock.losses.append(float((out[0] if return_outputs else out).detach()))
            items.append(None if num_items_in_batch is None else int(num_items_in_batch))
            return out

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            clock.begin()

        def on_step_end(self, args, state, control, **kwargs):
            clock.end()

    args = GKDConfig(
        output_dir=str(work / "trl_out"), max_steps=WARMUP + MEASURED, per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=1, learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch",  # torch.optim.AdamW, as the stage
        lmbda=0.0, beta=0.0, temperature=1.0, seq_kd=False,  # off-policy forward KL
        bf16=False, fp16=False, gradient_checkpointing=False,  # SFTConfig defaults both to True; fp32, no recompute
        use_cpu=True, dataloader_num_workers=0, report_to=[], save_strategy="no", eval_strategy="no",
        logging_steps=1, disable_tqdm=True, seed=SEED, max_length=SEQ,
    )
    trainer = OrderedGKD(model=student, teacher_model=teacher, args=args, train_dataset=dataset,
                         data_collator=collate, processing_class=tok, callbacks=[Clock()])
    trainer.train()
    return {**shas, "num_items_in_batch": items}


def child(side: str, work: Path, out: Path) -> None:
    import torch

    torch.set_num_threads(THREADS)
    clock = StepClock()
    extra = child_distill(work, clock) if side == "distill" else child_trl(work, clock)
    expected = torch.load(work / "batches.pt")
    seen = clock.batches[: len(expected)]
    same = len(seen) == len(expected) and all(torch.equal(a, b) for a, b in zip(seen, expected))
    out.write_text(json.dumps({"side": side, **clock.summary(), **extra, "same_tokens_as_planned": same,
                               "torch_threads": torch.get_num_threads(), "peak_rss_mib_at_exit": max_rss_mib()}))


# ------------------------------------------------------------------------------------------ report
def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform()}


def versions() -> dict:
    from importlib import metadata

    return {name: metadata.version(name) for name in ("torch", "transformers", "trl", "accelerate", "datasets")}


def params(config: dict) -> int:
    from distill.models import build_from_config

    return sum(p.numel() for p in build_from_config(config, 0).parameters())


def summarize(runs: list[dict]) -> dict:
    """Per side, pooled over its runs: tokens / summed step seconds (the headline), tokens / median
    step (robust to load spikes from other jobs), tokens / process CPU second; then the ratios."""
    from statistics import median

    out: dict = {}
    for side in ("distill", "trl"):
        rs = [r for r in runs if r["side"] == side]
        steps = [t for r in rs for t in r["step_seconds"][WARMUP:]]
        cpu = [t for r in rs for t in r["step_cpu_seconds"][WARMUP:]]
        out[side] = {"runs_tok_per_s": [r["tok_per_s"] for r in rs],
                     "tok_per_s": round(BATCH * SEQ * len(steps) / sum(steps), 1),
                     "median_step_tok_per_s": round(BATCH * SEQ / median(steps), 1),
                     "tok_per_cpu_s": round(BATCH * SEQ * len(cpu) / sum(cpu), 1),
                     "loop_tok_per_s_mean": round(sum(r["loop_tok_per_s"] for r in rs) / len(rs), 1),
                     "peak_rss_mib_after_training": max(r["peak_rss_mib_after_training"] for r in rs)}
    for key in ("tok_per_s", "median_step_tok_per_s", "tok_per_cpu_s"):
        out[f"ratio_{key}"] = round(out["distill"][key] / out["trl"][key], 3)
    out["ratio_peak_rss"] = round(out["distill"]["peak_rss_mib_after_training"]
                                  / out["trl"]["peak_rss_mib_after_training"], 3)
    d = [r for r in runs if r["side"] == "distill"]
    t = [r for r in runs if r["side"] == "trl"]
    out["loss_step1"] = {"distill": d[0]["losses"][0], "trl": t[0]["losses"][0]}
    out["loss_max_abs_diff_all_steps"] = max(abs(a - b) for x in d for y in t for a, b in zip(x["losses"], y["losses"]))
    out["same_initial_weights"] = len({(r["teacher_sha"], r["student_sha"]) for r in runs}) == 1
    out["same_tokens"] = all(r["same_tokens_as_planned"] for r in runs)
    return out


def load_note(runs: list[dict], cores: int) -> list[str]:
    peak = max(x for r in runs for x in (r["load_avg_before"][0], r["load_avg_after"][0]))
    if peak <= cores:
        return []
    return [f"**The 1-minute load average reached {peak} on {cores} cores during these runs** (other jobs): "
            "wall-clock numbers are noisy; the median-step and CPU-second columns are less load-sensitive.", ""]


def write_md(result: dict, dest: Path) -> None:
    s, c = result["summary"], result["conditions"]
    lines = [
        "# KD step throughput: distill stage vs TRL GKDTrainer, end to end", "",
        f"Command: `{result['command']}` (git {str(result['git']['sha'])[:10]}"
        f"{', uncommitted changes' if result['git']['dirty'] else ''}); this file and the .json beside it are "
        "written by that script.", "",
        f"Conditions: {c['cpu']}, {c['cpu_count']} logical CPUs shared with other people's jobs; torch threads "
        f"{c['threads']}; fp32; batch {c['batch']} x seq {c['seq']}; vocab {c['vocab']:,} (SmolLM2 tokenizer); "
        f"random Qwen3-style teacher {c['teacher_params']:,} params (6 layers) and student "
        f"{c['student_params']:,} (3 layers), hidden 256; {c['warmup_steps']} warm-up + {c['measured_steps']} "
        f"measured optimizer steps per run; torch AdamW lr {c['lr']}, constant, grad-norm clip 1.0; loss "
        f"forward KL at T=1 (distill: chunk_size {c['chunk_size']}, the stage default; TRL: GKDTrainer "
        f"lmbda=0, beta=0); same initial weights "
        f"{s['same_initial_weights']}, same token batches {s['same_tokens']}. Versions: "
        f"{', '.join(f'{k} {v}' for k, v in result['versions'].items())}.", "",
        "| side | tok/s (sum of step times) | tok/s (median step) | tok per CPU-second | loop tok/s | "
        "peak RSS after training (MiB) | runs (tok/s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for side in ("distill", "trl"):
        r = s[side]
        lines.append(f"| {side} | {r['tok_per_s']} | {r['median_step_tok_per_s']} | {r['tok_per_cpu_s']} | "
                     f"{r['loop_tok_per_s_mean']} | {r['peak_rss_mib_after_training']} | "
                     f"{', '.join(map(str, r['runs_tok_per_s']))} |")
    lines += [
        f"| **distill / TRL** | **{s['ratio_tok_per_s']}x** | {s['ratio_median_step_tok_per_s']}x | "
        f"{s['ratio_tok_per_cpu_s']}x | | {s['ratio_peak_rss']}x | |", "",
        f"Loss at step 1: distill {s['loss_step1']['distill']:.7f}, TRL {s['loss_step1']['trl']:.7f}; "
        f"largest difference at any of the {c['warmup_steps'] + c['measured_steps']} steps "
        f"{s['loss_max_abs_diff_all_steps']:.1e} (same loss definition, same updates).", "",
        *load_note(result["runs"], c["cpu_count"]),
        "Runs in order, each its own process (load average, 1 min, before -> after): "
        + "; ".join(f"{r['side']} {r['tok_per_s']} tok/s ({r['load_avg_before'][0]} -> {r['load_avg_after'][0]})"
                    for r in result["runs"]) + ".", "",
        "Step time: distill from the stage's step function being called to the optimizer step returning; "
        "TRL from `on_step_begin` to `on_step_end` (forward, backward, clip, optimizer). Loop tok/s also "
        "counts the work between steps (logging, data). Peak RSS is the process's ru_maxrss at the end of "
        "the last step (model setup included). The script's docstring gives the label detail that makes "
        "the two reported losses the same mean.",
    ]
    dest.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--order", default="trl,distill,distill,trl", help="sides to run, in order")
    parser.add_argument("--side", choices=("trl", "distill"), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        child(args.side, args.work, args.out)
        return
    with tempfile.TemporaryDirectory(prefix="kd_vs_gkd_") as tmp:
        work = Path(tmp)
        prepare(work)
        runs = [run_side(side, work, f"{i}-{side}") for i, side in enumerate(args.order.split(","))]
    from distill.provenance import git_state
    from distill.recipe import LossSpec

    conditions = {**machine(), "threads": THREADS, "batch": BATCH, "seq": SEQ, "vocab": VOCAB, "dtype": "float32",
                  "chunk_size": LossSpec().chunk_size, "warmup_steps": WARMUP, "measured_steps": MEASURED,
                  "lr": LR, "optimizer": "torch.optim.AdamW",
                  "schedule": "constant", "max_grad_norm": 1.0, "loss": "forward KL, T=1, mean over B x (S-1)",
                  "data": f"asset:text-en, SmolLM2 tokenizer, first {DATA_TOKENS} tokens packed by {SEQ}",
                  "teacher": TEACHER, "student": STUDENT,
                  "teacher_params": params(TEACHER), "student_params": params(STUDENT)}
    command = "python bench/kd_vs_gkdtrainer.py" + ("" if args.order == parser.get_default("order")
                                                     else f" --order {args.order}")
    if THREADS != 2:
        command = f"BENCH_THREADS={THREADS} {command}"
    result = {"command": command, "git": git_state(), "versions": versions(), "conditions": conditions,
              "summary": summarize(runs), "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "kd_vs_gkdtrainer.json").write_text(json.dumps(result, indent=2) + "\n")
    write_md(result, RESULTS / "kd_vs_gkdtrainer.md")
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
