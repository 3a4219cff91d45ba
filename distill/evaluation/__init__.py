"""Evaluation: one harness measures every artifact kind with the same task code.

harness.evaluate() -> results/<artifact id>.json (+ raw per-sample JSONL); report.write_report()
regenerates results/README.md and the Pareto plots. Tasks and suites are versioned YAML in eval/.
"""
