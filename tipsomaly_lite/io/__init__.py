"""The files floor: atomic writes, downloads, archive extraction, and the gates for images and masks.

Everything above (``data/``, ``backbones/``, the method, the CLI) reads and writes files through here:

- :mod:`.atomic`: temp file, fsync, rename, the user's umask; folder locks.
- :mod:`.download`: resumable, checksummed downloads and the cache folder.
- :mod:`.archives`: tar/zip extraction that refuses paths escaping the target folder.
- :mod:`.images`: image and mask decoding behind one gate (regular files, a pixel budget, finite values).
"""
