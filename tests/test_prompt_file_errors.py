"""The prompt loader's errors are one line and never repeat torch's advice to
retry with ``weights_only=False`` (that would run the file's code)."""

from __future__ import annotations

import pytest

from helpers.hostile import torch_zip_with
from tipsomaly_lite.data.released_prompts import UnsafePromptFileError, load_prompt_file

_ADVICE = ("weights_only", "trusted source", "arbitrary code execution")


def _one_clean_line(message: str) -> None:
    assert "\n" not in message
    assert not any(a in message for a in _ADVICE), message


def test_blocked_module_followed_by_junk_is_refused_without_the_advice(tmp_path):
    # The static scan gives up on the junk opcode; torch then says "set weights_only to False".
    path = torch_zip_with(tmp_path / "p.pth", pickle_bytes=b"\x80\x02cos\nsystem\n\xff.")
    with pytest.raises(UnsafePromptFileError, match="os.system") as info:
        load_prompt_file(path)
    _one_clean_line(str(info.value))


@pytest.mark.parametrize("payload", [b"\x80\x02cposix\nsystem\n", b"\x80\x02\x82\x01.", b"\x80\x02]q\x00(K\x01"])
def test_broken_pickles_give_one_clean_line(tmp_path, payload):
    path = torch_zip_with(tmp_path / "p.pth", pickle_bytes=payload)
    with pytest.raises(ValueError, match=r"p\.pth") as info:
        load_prompt_file(path)
    _one_clean_line(str(info.value))
    assert not str(info.value).rstrip().endswith(":")  # an empty torch message still says something


def test_bad_byteorder_record_names_the_file(tmp_path):
    path = torch_zip_with(tmp_path / "p.pth", byteorder=b"middle")
    with pytest.raises(ValueError, match=r"p\.pth is not a readable torch archive.*middle") as info:
        load_prompt_file(path)
    _one_clean_line(str(info.value))
