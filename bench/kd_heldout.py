"""Held-out CE/perplexity (the stages' own `heldout_ce`, same blocks as the runs) and
forward tokens/s for a list of model directories, on the recipe's data spec.
  python bench/kd_heldout.py RECIPE MODEL_DIR... > out.json
"""

import json
import sys
import time

import torch

from distill import recipe, students
from distill.data import text_blocks
from distill.models import load_causal_lm
from distill.recipe import ModelRef
from distill.stages.common import heldout_ce


def main() -> None:
    r = recipe.load(sys.argv[1])
    spec = r.stages[-1].data
    out = {"recipe": sys.argv[1], "threads": torch.get_num_threads(), "models": {}}
    for path in sys.argv[2:]:
        model, tok = load_causal_lm(ModelRef(source=path))
        _, heldout = text_blocks(spec, tok, r.seed)
        vocab = students.output_head(model).shape[0]
        t = time.perf_counter()
        row = heldout_ce(model, heldout, vocab)
        secs = time.perf_counter() - t
        row.update(heldout_tokens=int(heldout.numel()), forward_tok_per_s=round(heldout.numel() / secs, 1),
                   params=sum(p.numel() for p in model.parameters()))
        out["models"][path] = row
        print(path, row, file=sys.stderr)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
