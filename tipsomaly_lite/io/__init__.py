"""The files floor: atomic writes, downloads, archive extraction, and the gates for images and masks.

Everything above (``data/``, ``backbones/``, the method, the CLI) reads and writes files through here:

- :mod:`.atomic`: temp file, fsync, rename, the user's umask; folder locks.
- :mod:`.download`: resumable, checksummed downloads and the cache folder.
- :mod:`.archives`: tar/zip extraction that refuses paths escaping the target folder.
- :mod:`.images`: image and mask decoding behind one gate (regular files, a pixel budget, finite values).
"""

from tipsomaly_lite._api import face

_PUBLIC = {
    "tipsomaly_lite.io.atomic": ("atomic_file", "atomic_folder", "file_lock"),
    "tipsomaly_lite.io.download": ("DownloadError", "cache_dir"),
    "tipsomaly_lite.io.archives": ("ArchiveError", "extract_archive"),
    "tipsomaly_lite.io.images": ("resize_image", "to_float_rgb", "open_image"),
    "tipsomaly_lite.io.jsonfile": ("JSONFileError", "read_json"),
    "tipsomaly_lite.io.guard": ("OutputError", "claim_folder", "finish_folder", "check_apart"),
}
__getattr__, __dir__, __all__ = face(__name__, _PUBLIC)
