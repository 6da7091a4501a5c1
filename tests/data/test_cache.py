"""The dataset cache: keyed by the sources' content, entries verified against their recorded
digest before anything is unpickled, one entry per dataset and options."""

import os
import pickle
import shutil

import pytest
import torch

from dataset import cache, larochelle
from dataset.registry import build_dataset
from tests.data.test_datasets import write_variant


class Decoder:
    """A dataset of one source file: labels are its bytes; counts the decodes."""

    def __init__(self, root):
        self.root, self.calls = root, 0
        self.source = root / "labels.bin"
        self.source.write_bytes(bytes([0, 1, 1, 0]))

    def __call__(self):
        self.calls += 1
        return {"labels": torch.tensor(list(self.source.read_bytes()))}

    def load(self):
        return cache.cached(self.root, "toy", {"side": 2}, [self.source], self)


def entries(root):
    return sorted(p.name for p in (root / ".cache").glob("*.pt"))


def test_warm_start_reads_the_entry_without_hashing(tmp_path, monkeypatch):
    decoder = Decoder(tmp_path)
    assert decoder.load()["labels"].tolist() == [0, 1, 1, 0]
    hashed = []
    digest = cache.file_digest
    monkeypatch.setattr(cache, "file_digest", lambda path, algorithm: hashed.append(path) or digest(path, algorithm))
    assert decoder.load()["labels"].tolist() == [0, 1, 1, 0]
    assert decoder.calls == 1 and hashed == []


def test_poisoned_labels_are_decoded_again(tmp_path):
    decoder = Decoder(tmp_path)
    decoder.load()
    entry, = (tmp_path / ".cache").glob("*.pt")
    torch.save({"labels": torch.tensor([99, 99, 99, 99])}, entry)  # a valid file, wrong labels
    assert decoder.load()["labels"].tolist() == [0, 1, 1, 0]
    assert decoder.calls == 2
    assert torch.load(entry, weights_only=True)["labels"].tolist() == [0, 1, 1, 0]
    assert entries(tmp_path) == [entry.name]


def test_a_tampered_entry_keeping_its_size_and_mtime_is_detected(tmp_path):
    decoder = Decoder(tmp_path)
    decoder.load()
    entry, = (tmp_path / ".cache").glob("*.pt")
    stat = entry.stat()
    data = bytearray(entry.read_bytes())
    position = bytes(data).rindex(bytes([0, 0, 0, 0, 0, 0, 0, 0, 1]))  # tensor bytes: 0, 1 as int64
    data[position + 8] = 7  # one label 1 -> 7 in place
    with entry.open("r+b") as stream:
        stream.write(data)
    os.utime(entry, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert decoder.load()["labels"].tolist() == [0, 1, 1, 0] and decoder.calls == 2


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("forge_index", [False, True])
def test_a_crafted_pickle_is_never_run(tmp_path, forge_index):
    """Whether or not the index is forged to vouch for it, the pickle's code does not run."""
    decoder = Decoder(tmp_path)
    decoder.load()
    entry, = (tmp_path / ".cache").glob("*.pt")
    marker = tmp_path / "pwned"
    entry.write_bytes(pickle.dumps({"labels": Payload(marker)}))
    if forge_index:
        index = cache._read_index(tmp_path / ".cache")
        record = index["entries"][entry.name]
        record.update(sha256=cache.file_digest(entry, "sha256"), stamp=cache._stamp(entry))
        cache._write_index(tmp_path / ".cache", {}, index["entries"])
    assert decoder.load()["labels"].tolist() == [0, 1, 1, 0]
    assert not marker.exists() and decoder.calls == 2


def test_a_source_changed_with_the_same_size_and_mtime_replaces_the_entry(tmp_path):
    decoder = Decoder(tmp_path)
    decoder.load()
    before = entries(tmp_path)
    stat = decoder.source.stat()
    decoder.source.write_bytes(bytes([1, 0, 0, 1]))
    os.utime(decoder.source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert decoder.source.stat().st_size == stat.st_size
    assert decoder.load()["labels"].tolist() == [1, 0, 0, 1]
    assert decoder.calls == 2 and entries(tmp_path) == before  # replaced: one entry, not two


def test_other_options_get_their_own_entry(tmp_path):
    decoder = Decoder(tmp_path)
    decoder.load()
    cache.cached(tmp_path, "toy", {"side": 3}, [decoder.source], decoder)
    assert len(entries(tmp_path)) == 2 and decoder.calls == 2
    decoder.load()
    assert decoder.calls == 2


def test_a_copied_data_folder_is_verified_once(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    decoder = Decoder(tmp_path / "a")
    decoder.load()
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # new inodes: re-hashed, then trusted
    copy = Decoder.__new__(Decoder)
    copy.root, copy.calls, copy.source = tmp_path / "b", 0, tmp_path / "b" / "labels.bin"
    hashed = []
    digest = cache.file_digest
    monkeypatch.setattr(cache, "file_digest", lambda path, algorithm: hashed.append(path.name) or digest(path, algorithm))
    assert copy.load()["labels"].tolist() == [0, 1, 1, 0] and copy.calls == 0
    assert sorted(hashed) == sorted(["labels.bin", *entries(tmp_path / "b")])
    hashed.clear()
    copy.load()
    assert hashed == [] and copy.calls == 0


def test_a_real_loader_with_a_poisoned_cache_gets_its_labels_back(tmp_path, monkeypatch):
    """What used to end in ``IndexError: Target 99``: the loader decodes the files again."""
    write_variant(tmp_path, "rectangles", (9, 5), True, monkeypatch)
    clean = build_dataset("rectangles", tmp_path, download=False)
    entry, = tmp_path.glob(".cache/*.pt")
    data = torch.load(entry, weights_only=True)
    torch.save({**data, "labels": torch.full_like(data["labels"], 99)}, entry)
    calls = []
    original = larochelle.parse_amat
    monkeypatch.setattr(larochelle, "parse_amat", lambda *a, **k: calls.append(1) or original(*a, **k))
    again = build_dataset("rectangles", tmp_path, download=False)
    assert calls and torch.equal(again.train.labels, clean.train.labels)
    assert int(again.train.labels.max()) == 1
