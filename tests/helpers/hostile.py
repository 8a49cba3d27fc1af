"""Test-only builders of hostile or damaged files: archive bombs, crafted zips and tars."""

from __future__ import annotations

import io
import pathlib
import stat
import struct
import tarfile
import zipfile
import zlib

import numpy as np

_MIB = 1 << 20


def zero_deflate_stream(n_mib: int) -> bytes:
    """Raw deflate data that inflates to ``n_mib`` MiB of zeros, built in O(1 MiB) of work.

    After a full flush deflate restarts byte-aligned with an empty dictionary, so compressing one
    zero MiB and repeating its bytes gives a valid stream for any number of MiB (about 1 KiB each).
    """
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = co.compress(bytes(_MIB)) + co.flush(zlib.Z_FULL_FLUSH)
    return chunk * n_mib + b"\x03\x00"  # an empty final fixed-Huffman block ends the stream


def zip_bomb(path: pathlib.Path, n_mib: int, *, crc: int | None = None) -> pathlib.Path:
    """A one-member zip (``zeros.bin``) whose member inflates to ``n_mib`` MiB of zeros.

    ``crc`` defaults to the true CRC-32, computed only for small sizes (it reads every byte);
    large bombs get 0, which no honest extractor ever reaches.
    """
    data = zero_deflate_stream(n_mib)
    size = n_mib * _MIB
    if crc is None:
        crc = 0
        if n_mib <= 64:
            for _ in range(n_mib):
                crc = zlib.crc32(bytes(_MIB), crc)
    name = b"zeros.bin"
    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(data), size,
                        len(name), 0) + name
    central = struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc, len(data),
                          size, len(name), 0, 0, 0, 0, 0, 0) + name
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, len(central), len(local) + len(data), 0)
    path.write_bytes(local + data + central + end)
    return path


def tar_gz_with_huge_member(path: pathlib.Path, size: int) -> pathlib.Path:
    """A .tar.gz whose first header declares a ``size``-byte member (only its header is real)."""
    import gzip

    info = tarfile.TarInfo("huge.bin")
    info.size = size
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    with gzip.open(path, "wb") as gz:
        gz.write(header + bytes(64 * 1024))
    return path


def patch_zip_method(path: pathlib.Path, method: int) -> pathlib.Path:
    """Rewrite the compression method of every member (local and central headers) in place."""
    data = bytearray(path.read_bytes())
    for sig, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        start = 0
        while (i := data.find(sig, start)) >= 0:
            data[i + offset:i + offset + 2] = struct.pack("<H", method)
            start = i + 4
    path.write_bytes(bytes(data))
    return path


def patch_zip_encrypted(path: pathlib.Path) -> pathlib.Path:
    """Set the 'encrypted' flag bit of every member (local and central headers) in place."""
    data = bytearray(path.read_bytes())
    for sig, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = 0
        while (i := data.find(sig, start)) >= 0:
            flags = struct.unpack_from("<H", data, i + offset)[0] | 0x1
            data[i + offset:i + offset + 2] = struct.pack("<H", flags)
            start = i + 4
    path.write_bytes(bytes(data))
    return path


def zip_with(path: pathlib.Path, members: list[tuple[str, str, bytes | str]]) -> pathlib.Path:
    """A zip of ``(kind, name, data)`` members; kind is ``file``, ``dir`` or ``link`` (data = target)."""
    with zipfile.ZipFile(path, "w") as zf:
        for kind, name, data in members:
            if kind == "link":
                info = zipfile.ZipInfo(name)
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                zf.writestr(info, data)
            elif kind == "dir":
                zf.writestr(name if name.endswith("/") else name + "/", b"")
            else:
                zf.writestr(name, data)
    return path


def tar_with(path: pathlib.Path, members: list[tuple[str, str, bytes | str]], mode: str = "w") -> pathlib.Path:
    """A tar of ``(kind, name, data)`` members; kind is ``file``, ``dir``, ``link`` or ``hard``."""
    with tarfile.open(path, mode) as tf:
        for kind, name, data in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "link": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE}[kind]
            if kind in ("link", "hard"):
                info.linkname = data
            tf.addfile(info)
    return path


def hf_folder(folder: pathlib.Path, tokenizer: pathlib.Path, *, extra: dict | None = None,
              config: str | None = '{"vision_config": {"num_attention_heads": 4}}') -> pathlib.Path:
    """A local HuggingFace-style folder of the tiny model: hub-named ``model.safetensors``,
    ``config.json`` (``None``: none) and ``tokenizer.model``; ``extra`` adds or replaces tensors."""
    import shutil

    from safetensors.numpy import save_file

    from tipsomaly_lite.backbones.tips.tiny import TINY_ARCH, random_tips_arrays

    vision, text = random_tips_arrays(TINY_ARCH)
    state = {"vision_encoder." + k.replace(".mlp.fc1.", ".mlp.c_fc.").replace(".mlp.fc2.", ".mlp.c_proj."): v
             for k, v in vision.items()}
    state.update({"text_encoder." + k: v for k, v in text.items()})
    state.update(extra or {})
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v, dtype="float32") for k, v in state.items()},
              str(folder / "model.safetensors"))
    if config is not None:
        (folder / "config.json").write_text(config)
    shutil.copyfile(tokenizer, folder / "tokenizer.model")
    return folder


def torch_zip_with(path: pathlib.Path, *, pickle_bytes: bytes | None = None,
                   byteorder: bytes | None = None) -> pathlib.Path:
    """A ``torch.save`` zip of two prompt tensors with its ``data.pkl`` or ``byteorder`` replaced."""
    import torch

    good = path.with_name(path.name + ".orig")
    torch.save([torch.zeros(2, 4), torch.zeros(2, 4)], good)
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if pickle_bytes is not None and info.filename.endswith("data.pkl"):
                data = pickle_bytes
            if byteorder is not None and info.filename.endswith("byteorder"):
                data = byteorder
            zout.writestr(info.filename, data)
    good.unlink()
    return path
