"""Data in and out: benchmark datasets, their preparation, toy data, downloads and safe file writing.

- :mod:`.datasets`: :class:`~tipsomaly_lite.data.datasets.AnomalyDataset` over a prepared ``meta.json``.
- :mod:`.prepare`: the seven benchmarks' native layouts -> the common layout.
- :mod:`.toy_data`: a generated toy dataset in the MVTec layout (offline mode).
- :mod:`.download`: resumable, checksummed downloads and the cache folder.
- :mod:`.archives`: safe tar/zip extraction.
- :mod:`.atomic`: atomic file and folder writes.
- :mod:`.released_prompts`: the authors' released prompt files, read without unpickling.
"""
