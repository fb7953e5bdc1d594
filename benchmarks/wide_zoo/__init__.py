"""The wide zoo: models from libraries' registries (timm, transformers, torchvision, smp, MONAI) through
``initdiag.audit``, one subprocess per model, to measure its verdicts on models nobody tuned it for.

``python benchmarks/wide_zoo/run.py --list`` shows the catalogue; ``--summary results.jsonl`` the tally.
"""
