"""The Tipsomaly method, one module a step, in the paper's reading order (see docs/method.md).

- :mod:`.prompts`: fixed prompt vocabularies and text features (Eq. 1).
- :mod:`.scoring`: the two-way softmax for a global token or every patch (Eq. 2-3).
- :mod:`.prompt_learner`: learnable pixel prompts (Eq. 4).
- :mod:`.losses`: Focal + Dice on the patch probabilities (Eq. 5-7).
- :mod:`.feature_cache`: frozen vision features computed once, reused by every epoch.
- :mod:`.training`: the training loop of the prompts.
- :mod:`.fusion`: local-to-global fusion of the image score (Eq. 8).
- :mod:`.maps`: anomaly maps (upsampling and Gaussian smoothing) and patch-text similarity maps.
- :mod:`.detector`: the whole method in one object.
"""
