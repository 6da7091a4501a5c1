"""Datasets: every loader on small format-exact files; splits, normalisation, caching, bad input.

No test touches the network: ``dataset.files.urlopen`` is replaced by a fake that serves bytes or
fails as if offline.
"""

import ast
import dataclasses
import gzip
import hashlib
import inspect
import io
import pickle
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

import dataset
from dataset import DatasetError, build_dataset, cache, cifar, files, larochelle, norb, plume, rotmnist
from tests import fakes
from tests.fakes import amat_bytes, make_fakes, patched, write_archive, write_norb_file

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "data"
REAL = ["cifar10", "rot-mnist", "mnist-bg-rot", "mnist-noise", "rectangles", "norb", "smallnorb"]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any download attempt fails as if offline unless a test serves bytes itself."""
    def offline(url, timeout=None):
        raise URLError("network is unreachable")
    monkeypatch.setattr(files, "urlopen", offline)
    files._verified.clear()


class FakeResponse(io.BytesIO):
    def __init__(self, data: bytes, length: int | None = None):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data) if length is None else length)}


def serve(monkeypatch, payloads: dict[str, bytes], requested: list | None = None):
    def fake_urlopen(url, timeout=None):
        if requested is not None:
            requested.append(url)
        if url not in payloads:
            raise URLError("not served")
        return FakeResponse(payloads[url])
    monkeypatch.setattr(files, "urlopen", fake_urlopen)


def build(name, fake, **options):
    with patched(fake.patches):
        return build_dataset(name, fake.root, **{**fake.options, **options})


def first_batch(split):
    return next(iter(DataLoader(split, batch_size=7, shuffle=False)))


# --- registry and configs ---------------------------------------------------------------------

def test_all_names_registered():
    assert set(REAL + ["rectangles-generated", "rot-mnist-generated"]) <= set(dataset.available())
    with pytest.raises(DatasetError, match="unknown dataset"):
        build_dataset("mnist-nosie", "/nowhere")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_data_configs(path):
    config = yaml.safe_load(path.read_text())
    assert config["name"] == path.stem and config["root"].startswith("${paths.data_dir}/")
    assert isinstance(config["image_size"], list) and isinstance(config["in_channels"], int)
    if config["name"] in {**plume.TASK_SETS, **plume.SMALL_SETS}:
        train, test, shape = {**plume.TASK_SETS, **plume.SMALL_SETS}[config["name"]]
        windows = plume.SMALL_WINDOWS if config["name"] in plume.SMALL_SETS else plume.WINDOWS
        options = config["options"]
        assert [plume.as_task(t) for t in options["train_tasks"]] == train
        assert [plume.as_task(t) for t in options["test_tasks"]] == test
        assert all(isinstance(t, (int, list)) for t in options["train_tasks"] + options["test_tasks"])
        assert options["windows"] == windows and [config["in_channels"], *config["image_size"]] == list(shape)
    else:
        builder = dataset.registry._BUILDERS[config["name"]]
        inspect.signature(builder).bind(Path("root"), **config["options"])  # every option is accepted


def test_loaders_import_neither_tools_nor_tests():
    """dataset/ is shipped; the data-preparation tools (tools/) and the fakes (tests/) are not."""
    for path in sorted(Path(dataset.__file__).parent.glob("*.py")):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
        assert not {m for m in imported if m.split(".")[0] in ("tools", "tests")}, path.name


def test_task_lists():
    sizes = {name: (len(train), len(test)) for name, (train, test, _) in plume.TASK_SETS.items()}
    assert sizes == {"plume-translation": (25, 10), "plume-rotation": (26, 10), "plume-scale": (28, 10),
                     "jetflow": (18, 6)}
    for train, test, _ in plume.TASK_SETS.values():
        assert not set(train) & set(test) and len(set(train)) == len(train)
    assert sorted(plume.JETFLOW_TRAIN + plume.JETFLOW_TEST) == [(i, j) for i in range(1, 4) for j in range(1, 9)]


# --- every real loader on fake files: shapes, dtypes, labels, splits, cold and warm ------------

EXPECTED = {  # name -> (channels, side, classes)
    "cifar10": (3, 32, 10), "rot-mnist": (1, 28, 10), "mnist-bg-rot": (1, 28, 10), "mnist-noise": (1, 28, 10),
    "rectangles": (1, 28, 2), "norb": (1, 32, 6), "smallnorb": (1, 24, 5),
}


@pytest.fixture(scope="module")
def fake_world(tmp_path_factory):
    return make_fakes(tmp_path_factory.mktemp("fakes"), rows=20)


@pytest.mark.parametrize("name", REAL)
def test_loader_on_fake_files(name, fake_world):
    fake = fake_world[name]
    channels, side, classes = EXPECTED[name]
    cold = build(name, fake)
    assert (cold.num_classes, cold.in_channels, cold.image_shape) == (classes, channels, (side, side))
    for split in (cold.train, cold.valid, cold.test):
        images, labels = first_batch(split)
        assert images.dtype == torch.float32 and images.shape[1:] == (channels, side, side)
        assert labels.dtype == torch.int64 and 0 <= labels.min() and labels.max() < classes
    assert len(list(fake.root.glob(".cache/*.pt"))) == 1 and not list(fake.root.glob(".cache/.*"))
    warm = build(name, fake)
    for a, b in zip((cold.train, cold.valid, cold.test), (warm.train, warm.valid, warm.test)):
        assert len(a) == len(b)
        assert all(torch.equal(x, y) for x, y in zip(first_batch(a), first_batch(b)))


def test_warm_start_skips_decoding(fake_world, monkeypatch):
    fake = fake_world["rot-mnist"]
    build("rot-mnist", fake)
    monkeypatch.setattr(larochelle, "parse_amat", lambda *a, **k: pytest.fail("decoded again"))
    build("rot-mnist", fake)


# --- CIFAR-10 --------------------------------------------------------------------------------

def test_cifar_split_and_normalisation(tmp_path):
    fake = fakes.fake_cifar(tmp_path, per_batch=10, seed=3)
    splits = build("cifar10", fake, valid_size=8, seed=1)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (42, 8, 10)
    assert not set(splits.train.indices.tolist()) & set(splits.valid.indices.tolist())
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb") as stream:
        batch = pickle.load(stream)
    raw = torch.from_numpy(batch["data"][0].reshape(3, 32, 32)).float() / 255
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.247, 0.243, 0.261])
    expected = (raw - mean[:, None, None]) / std[:, None, None]
    image, label = splits.test[0]
    torch.testing.assert_close(image, expected)
    assert label == batch["labels"][0]
    again = build("cifar10", fake, valid_size=8, seed=1)
    assert torch.equal(again.valid.indices, splits.valid.indices)


def test_cifar_offline_message(tmp_path):
    with pytest.raises(DatasetError) as error:
        build_dataset("cifar10", tmp_path)
    message = str(error.value)
    assert "offline" in message and "cifar-10-python.tar.gz" in message and str(tmp_path) in message
    assert "cifar-10-batches-py" in message
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing partial left


def test_cifar_corrupt_batch_and_archive(tmp_path):
    fake = fakes.fake_cifar(tmp_path, per_batch=5)
    build("cifar10", fake, valid_size=5)
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="incomplete or corrupt"):
        build("cifar10", fake, valid_size=5)
    other = tmp_path / "other"
    fake = fakes.fake_cifar(other, per_batch=5)
    (other / cifar.ARCHIVE).write_bytes((other / cifar.ARCHIVE).read_bytes()[:-100])
    with pytest.raises(DatasetError, match="corrupt or incomplete.*md5"):
        build("cifar10", fake, valid_size=5)
    assert not (other / cifar.FOLDER).exists()


# --- Larochelle .amat family -------------------------------------------------------------------

def numbered_rows(count, num_classes, start=0):
    """Row k has every pixel (start + k) / 1e4 and label (start + k) % num_classes."""
    values = (start + np.arange(count)) / 1e4
    return np.repeat(values[:, None], 784, 1), (start + np.arange(count)) % num_classes


def write_variant(root, name, rows, extracted, monkeypatch, level=1):
    spec = larochelle.VARIANTS[name]
    members, start = {}, 0
    for member, count in zip(spec.members, rows):
        members[member.format(level=level)] = amat_bytes(*numbered_rows(count, spec.num_classes, start))
        start += count
    root.mkdir(parents=True, exist_ok=True)
    if extracted:
        (root / "sub").mkdir()
        for member, data in members.items():
            (root / "sub" / member).write_bytes(data)
        checksum = spec.checksum
    else:
        archive = write_archive(root / spec.archive, members)
        checksum = (spec.checksum[0], files.file_digest(archive, spec.checksum[0]))
    monkeypatch.setitem(larochelle.VARIANTS, name,
                        dataclasses.replace(spec, checksum=checksum, rows=tuple(rows), train=6, valid=3))


@pytest.mark.parametrize("extracted", [False, True], ids=["archive", "extracted"])
@pytest.mark.parametrize("name", ["rot-mnist", "mnist-bg-rot", "mnist-noise", "rectangles"])
def test_larochelle_rows(name, extracted, tmp_path, monkeypatch):
    rows = (12,) if name == "mnist-noise" else (9, 5)
    write_variant(tmp_path, name, rows, extracted, monkeypatch, level=4)
    splits = build_dataset(name, tmp_path, download=False, **({"noise_level": 4} if name == "mnist-noise" else {}))
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (6, 3, sum(rows) - 9)
    row_ids = [round(float(splits.train.images[j].mean()) * 1e4) for j in splits.test.indices]
    assert row_ids == list(range(9, sum(rows)))  # test = the rows after train and valid, in order
    assert [int(splits.valid[i][1]) for i in range(3)] == [k % splits.num_classes for k in (6, 7, 8)]
    images = torch.stack([splits.train[i][0] for i in range(6)])
    if name == "mnist-bg-rot":  # standardised per pixel with the training rows' statistics
        torch.testing.assert_close(images.mean(0), torch.zeros(1, 28, 28), atol=1e-4, rtol=0)
        torch.testing.assert_close(images.std(0, unbiased=False), torch.ones(1, 28, 28), atol=1e-3, rtol=0)
    else:
        torch.testing.assert_close(images[:, 0, 3, 5], torch.arange(6) / 1e4)


def test_mnist_noise_level(tmp_path, monkeypatch):
    write_variant(tmp_path, "mnist-noise", (12,), True, monkeypatch, level=2)
    build_dataset("mnist-noise", tmp_path, download=False, noise_level=2)
    with pytest.raises(DatasetError, match="mnist_noise_variations_all_5.amat"):
        build_dataset("mnist-noise", tmp_path, download=False, noise_level=5)
    for bad in (0, 7, "2"):
        with pytest.raises(DatasetError, match="noise_level"):
            build_dataset("mnist-noise", tmp_path, noise_level=bad)


def test_amat_bad_input(tmp_path, monkeypatch):
    write_variant(tmp_path, "rot-mnist", (9, 5), True, monkeypatch)
    train_file = next(tmp_path.rglob("*train_valid.amat"))
    good = train_file.read_bytes()
    cases = {
        "truncated line": (good[:-200], "not a valid .amat"),
        "missing rows": (b"".join(good.splitlines(keepends=True)[:-2]), "has 7 rows, expected 9"),
        "bad label": (good.replace(b" 8.000000e+00\n", b" 1.200000e+01\n"), r"labels range over \[0, 12\]"),
        "fractional label": (good.replace(b" 8.000000e+00\n", b" 8.500000e+00\n"), "whole numbers"),
        "not numbers": (good.replace(b"0.0003", b"abc", 1), "not a valid .amat"),
    }
    for case, (data, message) in cases.items():
        train_file.write_bytes(data)
        with pytest.raises(DatasetError, match=message) as error:
            build_dataset("rot-mnist", tmp_path, download=False)
        assert "train_valid.amat" in str(error.value), case


def test_archive_checksum_and_corruption(tmp_path, monkeypatch):
    write_variant(tmp_path, "rectangles", (9, 5), False, monkeypatch)
    archive = tmp_path / "rectangles.zip"
    data = archive.read_bytes()
    archive.write_bytes(data[:-300])
    with pytest.raises(DatasetError, match="rectangles.zip is corrupt or incomplete.*sha1"):
        build_dataset("rectangles", tmp_path, download=False)
    spec = larochelle.VARIANTS["rectangles"]
    monkeypatch.setitem(larochelle.VARIANTS, "rectangles",  # a damaged archive whose checksum "matches"
                        dataclasses.replace(spec, checksum=("sha1", files.file_digest(archive, "sha1"))))
    with pytest.raises(DatasetError, match="rectangles.zip is corrupt or truncated"):
        build_dataset("rectangles", tmp_path, download=False)


def test_corrupt_targz(tmp_path, monkeypatch):
    write_variant(tmp_path, "mnist-noise", (12,), False, monkeypatch)
    archive = tmp_path / "mnist_noise_variation.tar.gz"
    archive.write_bytes(archive.read_bytes()[:len(archive.read_bytes()) // 2])
    spec = larochelle.VARIANTS["mnist-noise"]
    monkeypatch.setitem(larochelle.VARIANTS, "mnist-noise",
                        dataclasses.replace(spec, checksum=("sha1", files.file_digest(archive, "sha1"))))
    with pytest.raises(DatasetError, match="mnist_noise_variation.tar.gz is corrupt or truncated"):
        build_dataset("mnist-noise", tmp_path, download=False)


def test_download_verified_then_renamed(tmp_path, monkeypatch):
    source = tmp_path / "source"
    write_variant(source, "rot-mnist", (9, 5), False, monkeypatch)
    payload = (source / "mnist_rotation_new.zip").read_bytes()
    url = larochelle.BASE_URL + "mnist_rotation_new.zip"
    root = tmp_path / "root"
    serve(monkeypatch, {url: payload[:100] + b"X" + payload[101:]})  # wrong bytes: checksum mismatch
    with pytest.raises(DatasetError, match="sha1|md5") as error:
        build_dataset("rot-mnist", root)
    assert "nothing was kept" in str(error.value)
    assert not [p for p in root.rglob("*") if p.is_file()]  # no partial or bad file left behind
    requested = []
    serve(monkeypatch, {url: payload}, requested)
    splits = build_dataset("rot-mnist", root)
    assert requested == [url] and len(splits.test) == 5
    assert (root / "mnist_rotation_new.zip").read_bytes() == payload
    assert not list(root.glob(".*.part"))
    build_dataset("rot-mnist", root)  # present now: no second download
    assert requested == [url]


def test_download_cut_off_and_offline(tmp_path, monkeypatch):
    def short(url, timeout=None):
        return FakeResponse(b"abc", length=10)
    monkeypatch.setattr(files, "urlopen", short)
    with pytest.raises(DatasetError, match="cut off"):
        files.download("http://example.invalid/x.zip", tmp_path / "x.zip", None)
    assert not list(tmp_path.iterdir())
    monkeypatch.setattr(files, "urlopen", lambda url, timeout=None: (_ for _ in ()).throw(URLError("no route")))
    with pytest.raises(DatasetError) as error:
        build_dataset("rectangles", tmp_path / "rect")
    message = str(error.value)
    assert "could not download" in message and "offline" in message and "rectangles.zip" in message
    assert str(tmp_path / "rect") in message
    with pytest.raises(DatasetError, match="download is off"):
        build_dataset("rectangles", tmp_path / "rect", download=False)


# --- NORB and smallNORB ------------------------------------------------------------------------

def test_norb_left_image_nearest_resize(tmp_path):
    fake = fakes.fake_norb(tmp_path, "smallnorb", rows=6, seed=4)
    splits = build("smallnorb", fake, valid_fraction=0.5)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (3, 3, 6)
    with gzip.open(tmp_path / "smallnorb-5x01235x9x18x6x2x96x96-testing-dat.mat.gz") as stream:
        raw = np.frombuffer(stream.read()[24:], dtype=np.uint8).reshape(6, 2, 96, 96)
    pick = [4 * k + 2 for k in range(24)]  # pixel centres: floor((k + 0.5) * 96 / 24)
    image, _ = splits.test[1]
    torch.testing.assert_close(image[0], torch.from_numpy(raw[1, 0][np.ix_(pick, pick)]).float() / 255)


def test_norb_standardised_and_gz_mix(tmp_path):
    fake = fakes.fake_norb(tmp_path, "norb", rows=3)
    assert {p.suffix for p in tmp_path.iterdir()} == {".mat", ".gz"}
    splits = build("norb", fake, valid_fraction=0.1)
    assert (len(splits.train) + len(splits.valid), len(splits.test)) == (30, 6)
    everything = torch.stack([splits.train.images[i].float() for i in range(30)])
    standardised = (everything - splits.train.mean) / splits.train.std
    torch.testing.assert_close(standardised.mean(0), torch.zeros(1, 32, 32), atol=1e-4, rtol=0)


def test_norb_missing_files_listed_at_once(tmp_path):
    fake = fakes.fake_norb(tmp_path, "norb", rows=2)
    (tmp_path / "norb-5x46789x9x18x6x2x108x108-training-03-cat.mat").unlink()
    (tmp_path / "norb-5x01235x9x18x6x2x108x108-testing-02-dat.mat.gz").unlink()
    with pytest.raises(DatasetError) as error:
        build("norb", fake)
    message = str(error.value)
    assert "2 NORB file(s) missing" in message and "training-03-cat.mat" in message and "testing-02-dat.mat" in message


@pytest.mark.parametrize("case", ["truncated", "magic", "labels", "count", "shape", "trailing"])
def test_norb_bad_files(case, tmp_path):
    fake = fakes.fake_norb(tmp_path, "norb", rows=2)
    dat = tmp_path / "norb-5x46789x9x18x6x2x108x108-training-01-dat.mat"
    cat = tmp_path / "norb-5x46789x9x18x6x2x108x108-training-01-cat.mat"
    target, message = dat, None
    if case == "truncated":
        dat.write_bytes(dat.read_bytes()[:-10])
        message = "truncated"
    elif case == "magic":
        dat.write_bytes(b"\x00\x00\x00\x00" + dat.read_bytes()[4:])
        message = "not a NORB"
    elif case == "labels":
        write_norb_file(cat, np.array([1, 6], dtype=np.int32), gz=False)
        target, message = cat, r"range over \[1, 6\], expected \[0, 5\]"
    elif case == "count":
        write_norb_file(cat, np.array([1, 2, 3], dtype=np.int32), gz=False)
        message = "2 images but .* 3 labels"
    elif case == "shape":
        write_norb_file(dat, np.zeros((2, 2, 96, 96), np.uint8), gz=False)
        message = "expected a uint8 matrix"
    else:
        dat.write_bytes(dat.read_bytes() + b"\x00")
        message = "past the size"
    with pytest.raises(DatasetError, match=message) as error:
        build("norb", fake)
    assert str(target) in str(error.value)


def test_smallnorb_checksum_and_download(tmp_path, monkeypatch):
    fake = fakes.fake_norb(tmp_path / "src", "smallnorb", rows=4)
    gz = "smallnorb-5x46789x9x18x6x2x96x96-training-cat.mat.gz"
    with patched(fake.patches):
        data = {p.name: p.read_bytes() for p in (tmp_path / "src").glob("*.gz")}
        broken = gzip.compress(gzip.decompress(data[gz])[:-4] + b"\x01\x00\x00\x00")
        (tmp_path / "src" / gz).write_bytes(broken)
        with pytest.raises(DatasetError, match=f"{gz} is corrupt or incomplete: its sha256"):
            build_dataset("smallnorb", tmp_path / "src", download=False)
        requested = []
        serve(monkeypatch, {norb.SPECS["smallnorb"].url + name: payload for name, payload in data.items()}, requested)
        splits = build_dataset("smallnorb", tmp_path / "dl")
        assert len(requested) == 4
        assert all(u.startswith("https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/") for u in requested)
        assert len(splits.test) == 4


# --- plume / JetFlow ---------------------------------------------------------------------------

def test_plume_tasks(tmp_path):
    tasks = plume.ROTATION_TRAIN[:3]
    fakes.write_tasks(tmp_path, tasks, frames=5, frame_shape=plume.PLUME_SHAPE)
    loaded = plume.load_tasks(tmp_path, [list(t) for t in tasks])
    assert list(loaded) == tasks
    assert all(v.shape == (5, 2, 64, 64) and v.dtype == torch.float32 for v in loaded.values())
    fakes.write_tasks(tmp_path / "scale", [0, 7], frames=4, frame_shape=plume.PLUME_SHAPE)
    assert sorted(plume.load_tasks(tmp_path / "scale", [7, 0])) == [0, 7]
    fakes.write_tasks(tmp_path / "jet", plume.JETFLOW_TEST, frames=3, frame_shape=plume.JETFLOW_SHAPE)
    jet = plume.load_tasks(tmp_path / "jet", plume.JETFLOW_TEST, plume.JETFLOW_SHAPE)
    assert jet[(2, 3)].shape == (3, 2, 62, 23)
    (tmp_path / "jet" / "raw_data_2_3.pt").rename(tmp_path / "jet" / "jet-2-3.pt")
    assert list(plume.load_tasks(tmp_path / "jet", [[2, 3]], plume.JETFLOW_SHAPE, pattern="jet-{i}-{j}.pt")) == [(2, 3)]
    assert plume.frames_needed() == 12 + 249 + 20 and plume.frames_needed(held_out=True) == 12 + 99 + 20


def test_plume_bad_input(tmp_path):
    fakes.write_tasks(tmp_path, [(1, 0), (2, 1)], frames=4, frame_shape=plume.PLUME_SHAPE)
    with pytest.raises(DatasetError) as error:
        plume.load_tasks(tmp_path, [(1, 0), (2, 1), (3, 2), (4, 3)])
    assert "2 of 4 task files missing" in str(error.value)
    assert "raw_data_3_2.pt, raw_data_4_3.pt" in str(error.value)
    assert f"python -m tools.plume_generate --variant rotation|translation|scale --out {tmp_path}" in str(error.value)
    with pytest.raises(DatasetError, match=r"shape \(4, 2, 64, 64\), expected \(T, 2, 62, 23\)"):
        plume.load_tasks(tmp_path, [(1, 0)], plume.JETFLOW_SHAPE)
    with pytest.raises(DatasetError, match="T >= 300"):
        plume.load_tasks(tmp_path, [(1, 0)], min_frames=300)
    path = tmp_path / "raw_data_2_1.pt"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(DatasetError, match="raw_data_2_1.pt cannot be loaded"):
        plume.load_tasks(tmp_path, [(2, 1)])
    torch.save(torch.zeros(3, 2, 64, 64, dtype=torch.int64), path)
    with pytest.raises(DatasetError, match="float tensor"):
        plume.load_tasks(tmp_path, [(2, 1)])
    with pytest.raises(DatasetError, match="integer or a pair"):
        plume.load_tasks(tmp_path, ["2_1"])


def test_plume_manifest_names_a_bad_file(tmp_path, caplog):
    """Every task file is checked against the folder's manifest.json: a flipped byte, a truncated
    file and a file from another data set each stop the load with one line naming the file."""
    tasks = plume.ROTATION_TRAIN[:2]
    fakes.write_tasks(tmp_path, tasks, frames=5, frame_shape=plume.PLUME_SHAPE)
    fakes.write_manifest(tmp_path, "plume-rotation")
    good = plume.load_tasks(tmp_path, tasks, dataset="plume-rotation")
    assert list(good) == tasks and "manifest" not in caplog.text
    path = tmp_path / "raw_data_2_1.pt"
    original = path.read_bytes()

    def refused(content: bytes) -> str:
        path.write_bytes(content)
        with pytest.raises(DatasetError) as error:
            plume.load_tasks(tmp_path, tasks, dataset="plume-rotation")
        message = str(error.value)
        assert str(path) in message and "\n" not in message
        assert "--variant rotation --out" in message  # what to do
        return message

    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x01  # in the tensor payload: torch.load alone would accept it
    torch.load(io.BytesIO(bytes(flipped)), weights_only=True)
    assert "does not match" in refused(bytes(flipped))
    assert f"has {len(original) - 10:,} bytes" in refused(original[:-10])
    other = tmp_path / "other"  # a translation file of the same size, copied over it
    fakes.write_tasks(other, [(8, 5)], frames=5, frame_shape=plume.PLUME_SHAPE, seed=3)
    assert "does not match" in refused((other / "raw_data_8_5.pt").read_bytes())
    path.write_bytes(original)
    assert torch.equal(plume.load_tasks(tmp_path, tasks, dataset="plume-rotation")[(2, 1)], good[(2, 1)])
    with pytest.raises(DatasetError, match=r"holds plume-rotation task files, not plume-translation"):
        plume.load_tasks(tmp_path, tasks, dataset="plume-translation")
    fakes.write_tasks(tmp_path, [(3, 2)], frames=5, frame_shape=plume.PLUME_SHAPE)
    with pytest.raises(DatasetError, match=r"raw_data_3_2\.pt is not listed in .*manifest\.json"):
        plume.load_tasks(tmp_path, [(3, 2)], dataset="plume-rotation")
    with pytest.raises(DatasetError, match=r"manifest\.json there lists 2 task files: raw_data_1_0\.pt, "
                                           r"raw_data_2_1\.pt.*data=plume-<variant>-small"):
        plume.load_tasks(tmp_path, [(4, 3)], dataset="plume-rotation")
    (tmp_path / plume.MANIFEST).write_text("{truncated")
    with pytest.raises(DatasetError, match="manifest.json is unreadable"):
        plume.load_tasks(tmp_path, tasks, dataset="plume-rotation")


def test_plume_without_manifest_loads_with_one_warning(tmp_path, caplog):
    """Files from elsewhere (e.g. the original upstream ones) have no manifest: loaded, one warning."""
    fakes.write_tasks(tmp_path, plume.ROTATION_TRAIN[:2], frames=5, frame_shape=plume.PLUME_SHAPE)
    assert len(plume.load_tasks(tmp_path, plume.ROTATION_TRAIN[:2], dataset="plume-rotation")) == 2
    plume.load_tasks(tmp_path, plume.ROTATION_TEST[:0], dataset="plume-rotation")  # again: no second warning
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and f"{tmp_path} has no manifest.json" in warnings[0]
    caplog.clear()
    plume.load_tasks(tmp_path, plume.ROTATION_TRAIN[:2], dataset="jetflow")  # JetFlow has no generator
    assert not caplog.records


# --- generators --------------------------------------------------------------------------------

def test_rot_mnist_generated(tmp_path):
    splits = build_dataset("rot-mnist-generated", tmp_path, seed=0)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (4000, 500, 500)
    images, labels = first_batch(splits.test)
    assert images.shape == (7, 1, 28, 28) and images.dtype == torch.float32 and 0 <= images.min() and images.max() <= 1
    assert torch.bincount(splits.train.labels, minlength=10).tolist() == [500] * 10
    again = build_dataset("rot-mnist-generated", tmp_path / "elsewhere", seed=0, cache=False)
    assert torch.equal(again.train.images, splits.train.images) and torch.equal(again.train.labels, splits.train.labels)
    other = build_dataset("rot-mnist-generated", tmp_path, seed=1, train_size=100, valid_size=10, test_size=10)
    assert len(other.train) == 100 and not torch.equal(other.train.images[:100], splits.train.images[:100])
    with pytest.raises(DatasetError, match="sum to at most 5000"):
        build_dataset("rot-mnist-generated", tmp_path, train_size=4900, valid_size=100, test_size=100)


def test_rotation_is_a_rotation():
    pixels, _ = rotmnist.mnist_digits()
    images = torch.from_numpy(pixels[:4] / 255).reshape(4, 1, 28, 28)
    torch.testing.assert_close(rotmnist.rotate(images, torch.zeros(4)), images, atol=1e-5, rtol=0)
    quarter = rotmnist.rotate(images, torch.full((4,), torch.pi / 2))
    error = min((quarter - torch.rot90(images, k, (2, 3))).abs().max() for k in (1, -1))
    assert error < 1e-4  # a quarter turn maps pixel centres onto pixel centres


def test_rectangles_generated_deterministic():
    a = build_dataset("rectangles-generated", "unused", train_size=50, valid_size=5, test_size=5, seed=3)
    b = build_dataset("rectangles-generated", "unused", train_size=50, valid_size=5, test_size=5, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.train.tensors, b.train.tensors))


# --- the cache ---------------------------------------------------------------------------------

def test_cache_invalidation_and_corruption(tmp_path, monkeypatch):
    write_variant(tmp_path, "rectangles", (9, 5), True, monkeypatch)
    calls = []
    original = larochelle.parse_amat
    monkeypatch.setattr(larochelle, "parse_amat", lambda *a, **k: calls.append(1) or original(*a, **k))
    build_dataset("rectangles", tmp_path, download=False)
    assert len(calls) == 2
    entry, = tmp_path.glob(".cache/*.pt")
    entry.write_bytes(entry.read_bytes()[:100])  # a damaged cache entry is rebuilt, not trusted
    build_dataset("rectangles", tmp_path, download=False)
    assert len(calls) == 4
    test_file = next(tmp_path.rglob("rectangles_test.amat"))
    test_file.write_bytes(test_file.read_bytes().replace(b" 1.000000e+00\n", b" 0.000000e+00\n"))
    splits = build_dataset("rectangles", tmp_path, download=False)  # edited source: decoded again
    assert len(calls) == 6 and int(splits.test.labels[splits.test.indices].max()) == 0


def test_cache_unwritable_root_still_loads(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "save_atomic", lambda data, path: (_ for _ in ()).throw(PermissionError("read-only")))
    write_variant(tmp_path, "rectangles", (9, 5), True, monkeypatch)
    assert len(build_dataset("rectangles", tmp_path, download=False).train) == 6


def test_verify_reports_digest(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"hello")
    files.verify(path, ("sha256", hashlib.sha256(b"hello").hexdigest()))
    with pytest.raises(DatasetError, match="f.bin is corrupt or incomplete: its md5"):
        files.verify(path, ("md5", "0" * 32))
