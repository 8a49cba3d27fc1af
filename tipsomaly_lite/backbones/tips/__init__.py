"""TIPS (Text-Image Pretraining with Spatial awareness), ported exactly, in reading order.

- :mod:`.checkpoints`: the npz layout, architecture read from the arrays, validation.
- :mod:`.vision`: the DINOv2-style ViT/14 vision tower (two CLS tokens, patch tokens).
- :mod:`.text`: the SentencePiece tokenizer and the text tower.
- :mod:`.registry`: the public variants on the TIPS bucket and the download cache.
- :mod:`.model`: :class:`~tipsomaly_lite.backbones.tips.model.TIPS` and :func:`~tipsomaly_lite.backbones.tips.model.load_tips`.
- :mod:`.tiny`: the tiny toy model of the offline mode (trained on drawn toy defects, shipped as a file).
"""
