"""distill: a model compression and distillation workbench.

Recipes (YAML) drive teacher->student distillation, LoRA, pruning, quantization and export; one
evaluation harness measures every artifact. Importing this package is cheap: no torch, no
transformers. Heavy modules import them lazily, inside the functions that need them.
"""

__version__ = "0.1.0"
