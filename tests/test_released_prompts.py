"""Tests for tipsomaly_lite.data.released_prompts: safe loading and fetching, on files made here.

The authors' real files are never read by these tests: ``torch.save`` of a ParameterList of two
Parameters produces the same pickle structure, and a local HTTP server stands in for GitHub.
"""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
import os
import pickle
import re
import zipfile

import pytest
import torch

from tipsomaly_lite.io.download import DownloadError
from tipsomaly_lite.data.released_prompts import (
    PROMPT_FILE_NAME,
    RELEASED_PROMPTS,
    ReleasedPrompts,
    UnsafePromptFileError,
    fetch_released_prompts,
    load_prompt_file,
    load_released_prompts,
)

PARAMETER_LIST = "torch.nn.modules.container.ParameterList"


def make_pair(n: int = 8, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * 0.02, torch.randn(n, d, generator=g) * 0.02


def save_parameter_list(path, tensors) -> None:
    """Same layout as the authors' learnable_params_2.pth."""
    torch.save(torch.nn.ParameterList([torch.nn.Parameter(t.clone()) for t in tensors]), path)


# ---------------------------------------------------------------------------- good files


def test_parameter_list_file_round_trips(tmp_path):
    path = tmp_path / "learnable_params_2.pth"
    normal, anomalous = make_pair()
    save_parameter_list(path, [normal, anomalous])
    # It really is the awkward kind of file: plain weights_only loading refuses it.
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == [PARAMETER_LIST]
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)

    got_n, got_a = load_prompt_file(path)
    for got, want in ((got_n, normal), (got_a, anomalous)):
        assert type(got) is torch.Tensor and got.dtype == torch.float32 and not got.requires_grad
        assert got.shape == (8, 16)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not torch.equal(got_n, got_a)


def test_allowlist_does_not_leak_after_loading(tmp_path):
    path = tmp_path / "p.pth"
    save_parameter_list(path, make_pair())
    load_prompt_file(path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


@pytest.mark.parametrize("kind", ["list", "tuple", "stacked", "dict", "float64"])
def test_other_torch_layouts(tmp_path, kind):
    normal, anomalous = make_pair(n=4, d=6, seed=1)
    obj = {
        "list": [normal, anomalous],
        "tuple": (normal, anomalous),
        "stacked": torch.stack([normal, anomalous]),
        "dict": {"normal": normal, "anomalous": anomalous, "note": "extra keys are ignored"},
        "float64": [normal.double(), anomalous.double()],
    }[kind]
    path = tmp_path / f"{kind}.pt"
    torch.save(obj, path)
    got_n, got_a = load_prompt_file(path)
    assert got_n.dtype == torch.float32 and got_a.shape == (4, 6)
    torch.testing.assert_close(got_n, normal)
    torch.testing.assert_close(got_a, anomalous)


def test_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    normal, anomalous = make_pair(seed=2)
    path = tmp_path / "prompts.safetensors"
    save_file({"normal": normal, "anomalous": anomalous}, str(path))
    got_n, got_a = load_prompt_file(path)
    torch.testing.assert_close(got_n, normal, rtol=0, atol=0)
    torch.testing.assert_close(got_a, anomalous, rtol=0, atol=0)
    # Recognised by content too, whatever the name.
    renamed = tmp_path / "prompts.bin"
    os.replace(path, renamed)
    torch.testing.assert_close(load_prompt_file(renamed)[0], normal, rtol=0, atol=0)


def test_safetensors_missing_key(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "p.safetensors"
    save_file({"normal": torch.zeros(2, 3), "other": torch.zeros(2, 3)}, str(path))
    with pytest.raises(ValueError, match="'normal' and 'anomalous'"):
        load_prompt_file(path)


# ----------------------------------------------------------------------- malicious files


class RunsShell:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.target}",))


class RunsEval:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (builtins.eval, (f"open({self.target!r}, 'w').write('pwned')",))


class Custom:
    """Any class of ours: unpickling it would import this module and run its code."""

    def __init__(self):
        self.normal = torch.zeros(2, 3)


@pytest.mark.parametrize("maker, refused", [
    (lambda target: RunsShell(target), "system"),
    (lambda target: RunsEval(target), "eval"),
    (lambda target: Custom(), "Custom"),
    (lambda target: [torch.zeros(2, 3), RunsShell(target)], "system"),
])
def test_malicious_globals_are_refused_and_never_run(tmp_path, maker, refused):
    target = tmp_path / "PWNED"
    path = tmp_path / "evil.pth"
    torch.save(maker(target), path)
    with pytest.raises(UnsafePromptFileError) as info:
        load_prompt_file(path)
    assert not target.exists()
    message = str(info.value)
    assert str(path) in message and refused in message
    assert any(refused in name for name in info.value.refused)
    assert isinstance(info.value, ValueError)


def test_malicious_payload_hidden_in_a_parameter_list(tmp_path):
    target = tmp_path / "PWNED"
    plist = torch.nn.ParameterList([torch.nn.Parameter(t) for t in make_pair()])
    plist.payload = RunsShell(target)  # lands in the pickled __dict__ next to the parameters
    path = tmp_path / "evil.pth"
    torch.save(plist, path)
    with pytest.raises(UnsafePromptFileError, match="system"):
        load_prompt_file(path)
    assert not target.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")
def test_protocol_4_pickle_is_refused_without_running(tmp_path):
    # torch's static scan does not read protocol 4; the weights-only load must still refuse it.
    target = tmp_path / "PWNED"
    path = tmp_path / "evil4.pth"
    torch.save([torch.zeros(2, 3), RunsShell(target)], path, pickle_protocol=4)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_prompt_file(path)
    assert not target.exists()


# ------------------------------------------------------------------------ invalid files


@pytest.mark.parametrize("obj, match", [
    (torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(8, 16))]), "holds 1 prompt tensors"),
    (torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(8, 16)) for _ in range(3)]), "holds 3 prompt tensors"),
    ([torch.zeros(8, 16)] * 3, "exactly 2"),
    ([torch.zeros(8, 16), torch.zeros(8, 12)], "differ in shape"),
    ([torch.zeros(16), torch.zeros(16)], r"expected \(n, D\)"),
    ([torch.zeros(2, 8, 16), torch.zeros(2, 8, 16)], r"expected \(n, D\)"),
    ([torch.zeros(8, 16, dtype=torch.int64)] * 2, "floating point"),
    ([torch.zeros(8, 16), torch.full((8, 16), float("nan"))], "NaN"),
    ([torch.zeros(8, 16), torch.full((8, 16), float("inf"))], "infinite"),
    ([torch.zeros(8, 16), "not a tensor"], "not a tensor"),
    (torch.zeros(3, 8, 16), r"\(2, n, D\)"),
    ({"normal": torch.zeros(8, 16)}, "'normal' and 'anomalous'"),
    (42, "holds a int"),
])
def test_invalid_contents(tmp_path, obj, match):
    path = tmp_path / "bad.pth"
    torch.save(obj, path)
    with pytest.raises(ValueError, match=match) as info:
        load_prompt_file(path)
    assert not isinstance(info.value, UnsafePromptFileError)
    assert str(path) in str(info.value)


def test_garbage_and_truncated_files(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"<html>404: Not Found</html>")
    with pytest.raises(ValueError, match="neither a torch zip archive") as info:
        load_prompt_file(garbage)
    assert str(garbage) in str(info.value)

    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=re.escape(str(empty))):
        load_prompt_file(empty)

    good = tmp_path / "good.pth"
    save_parameter_list(good, make_pair())
    data = good.read_bytes()
    for cut in (len(data) // 2, len(data) - 10):
        truncated = tmp_path / f"truncated_{cut}.pth"
        truncated.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=re.escape(str(truncated))):
            load_prompt_file(truncated)


def test_zip_that_is_not_a_torch_archive(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match="not a readable torch archive"):
        load_prompt_file(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_prompt_file(tmp_path / "nope.pth")


# ------------------------------------------------------------------------------ registry


def test_registry():
    assert set(RELEASED_PROMPTS) == {"mvtec", "visa"}
    for key, entry in RELEASED_PROMPTS.items():
        assert isinstance(entry, ReleasedPrompts) and entry.name == key
        assert entry.url.startswith("https://raw.githubusercontent.com/AlirezaSalehy/Tipsomaly/main/workspaces/")
        assert f"trained_on_{key}_default/vegan-arkansas/checkpoints/{PROMPT_FILE_NAME}" in entry.url
        assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
        assert entry.trained_on and entry.evaluate_on_note
    assert "MVTec" in RELEASED_PROMPTS["visa"].evaluate_on_note
    with pytest.raises(dataclasses.FrozenInstanceError):
        RELEASED_PROMPTS["mvtec"].url = "x"


def test_unknown_name():
    with pytest.raises(ValueError, match="mvtec"):
        fetch_released_prompts("mpdd", download=False)


# ------------------------------------------------------------------------------- fetching


@pytest.fixture
def server(http_server):
    return http_server


@pytest.fixture
def served_prompts(server, tmp_path, monkeypatch):
    """A generated prompt file served locally and registered as 'mvtec'; a fresh cache."""
    monkeypatch.setenv("TIPSOMALY_HOME", str(tmp_path / "home"))
    source = tmp_path / "source.pth"
    pair = make_pair(seed=3)
    save_parameter_list(source, pair)
    data = source.read_bytes()
    server.files["/p.pth"] = data
    entry = dataclasses.replace(RELEASED_PROMPTS["mvtec"], url=server.url + "/p.pth",
                                sha256=hashlib.sha256(data).hexdigest())
    monkeypatch.setitem(RELEASED_PROMPTS, "mvtec", entry)
    return entry, pair, tmp_path / "home" / "released_prompts" / "mvtec" / PROMPT_FILE_NAME


def test_fetch_and_load_end_to_end(server, served_prompts):
    entry, (normal, anomalous), dest = served_prompts
    path = fetch_released_prompts("mvtec")
    assert path == dest and dest.is_file()
    assert [q["path"] for q in server.requests] == ["/p.pth"]

    got_n, got_a = load_released_prompts("mvtec", download=False)  # from the cache, no network
    torch.testing.assert_close(got_n, normal, rtol=0, atol=0)
    torch.testing.assert_close(got_a, anomalous, rtol=0, atol=0)
    load_released_prompts("mvtec")  # cached and verified: no second request
    assert [q["path"] for q in server.requests] == ["/p.pth"]


def test_sha_mismatch_is_an_error(server, served_prompts, monkeypatch):
    entry, _, dest = served_prompts
    monkeypatch.setitem(RELEASED_PROMPTS, "mvtec", dataclasses.replace(entry, sha256="0" * 64))
    with pytest.raises(DownloadError) as info:
        fetch_released_prompts("mvtec")
    assert "0" * 64 in str(info.value) and str(dest) in str(info.value)
    assert not dest.exists()


def test_failed_download_says_where_to_put_the_file(server, served_prompts, monkeypatch):
    entry, _, dest = served_prompts
    monkeypatch.setitem(RELEASED_PROMPTS, "mvtec", dataclasses.replace(entry, url=server.url + "/gone.pth"))
    with pytest.raises(DownloadError, match="404") as info:
        fetch_released_prompts("mvtec")
    assert str(dest) in str(info.value) and server.url + "/gone.pth" in str(info.value)


def test_download_false_with_missing_file_is_helpful(served_prompts, server):
    entry, _, dest = served_prompts
    with pytest.raises(FileNotFoundError) as info:
        load_released_prompts("mvtec", download=False)
    message = str(info.value)
    assert str(dest) in message and entry.url in message and entry.sha256 in message
    assert server.requests == []


def test_download_false_with_wrong_cached_file(served_prompts, server):
    _, _, dest = served_prompts
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"not the released file")
    with pytest.raises(ValueError, match="SHA-256"):
        fetch_released_prompts("mvtec", download=False)
    assert server.requests == []
