"""Measuring the method: metrics, evaluation runs and the paper's cross-dataset protocol.

- :mod:`.metrics`: image and pixel AUROC / AP / F1-max and both AUPRO definitions.
- :mod:`.protocol`: which learned prompts evaluate which dataset, and the paper's numbers.
- :mod:`.evaluation`: run a detector over a dataset, per-class and mean metrics, result files.
"""
