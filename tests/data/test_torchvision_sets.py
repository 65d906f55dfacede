"""torchvision datasets read from tiny files written in their on-disk formats."""

import pickle
import struct

import numpy as np
import pytest
import torch

from convattn.data import build_dataset, get_dataset_info, list_datasets
from convattn.exceptions import ConfigError, DatasetNotFoundError

N_TRAIN, N_TEST = 30, 10  # the last 10 % (3 images) of the training files become "val"


def _write_idx(path, array):
    array = np.asarray(array, dtype=np.uint8)
    magic = 0x0800 | array.ndim
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic))
        for d in array.shape:
            f.write(struct.pack(">I", d))
        f.write(array.tobytes())


def _images(rng, n, shape):
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)


def write_mnist(root, folder):
    rng = np.random.default_rng(0)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    data = {}
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        x, y = _images(rng, n, (28, 28)), rng.integers(0, 10, size=n)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", x)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", y)
        data[prefix] = (x, y)
    return data["train"], data["t10k"]


def _cifar_entry(x, y, key, name, hundred):
    """What a CIFAR python file holds: a dict of a uint8 array, int lists, a bytes label and file names."""
    entry = {"batch_label": f"{name} batch".encode(), "data": x, key: y, "filenames": [f"img_{i}.png" for i in y]}
    if hundred:
        entry["coarse_labels"] = [i // 5 for i in y]
    return entry


def write_cifar(root, hundred=False, protocol=pickle.DEFAULT_PROTOCOL):
    """CIFAR's files, written as its python pickles are (the originals: protocol 2, from Python 2)."""
    rng = np.random.default_rng(1)
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    key = "fine_labels" if hundred else "labels"
    ncls = 100 if hundred else 10
    names = ["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]
    per = N_TRAIN // len(names)
    xs, ys = [], []
    for name in names:
        x, y = _images(rng, per, (3 * 32 * 32,)), rng.integers(0, ncls, size=per).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump(_cifar_entry(x, y, key, name, hundred), f, protocol=protocol)
        xs.append(x)
        ys += y
    xt, yt = _images(rng, N_TEST, (3 * 32 * 32,)), rng.integers(0, ncls, size=N_TEST).tolist()
    with open(folder / ("test" if hundred else "test_batch"), "wb") as f:
        pickle.dump(_cifar_entry(xt, yt, key, "test", hundred), f, protocol=protocol)
    if hundred:
        meta = {"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": [f"s{i}" for i in range(20)]}
    else:
        meta = {"num_cases_per_batch": per, "label_names": [f"k{i}" for i in range(10)], "num_vis": 3072}
    with open(folder / ("meta" if hundred else "batches.meta"), "wb") as f:
        pickle.dump(meta, f, protocol=protocol)
    return (np.concatenate(xs).reshape(-1, 3, 32, 32), np.array(ys)), (xt.reshape(-1, 3, 32, 32), np.array(yt))


def write_svhn(root):
    import scipy.io

    rng = np.random.default_rng(2)
    folder = root / "svhn"
    folder.mkdir(parents=True)
    out = []
    for name, n in (("train", N_TRAIN), ("test", N_TEST)):
        x = _images(rng, n, (3, 32, 32))
        y = rng.integers(1, 11, size=n)  # SVHN stores 0 as 10
        y[0] = 10
        scipy.io.savemat(folder / f"{name}_32x32.mat", {"X": np.transpose(x, (2, 3, 1, 0)), "y": y.reshape(-1, 1)})
        out.append((x, np.where(y == 10, 0, y)))
    return out


def _unnormalise(x, info):
    return x * torch.tensor(info.std).view(-1, 1, 1) + torch.tensor(info.mean).view(-1, 1, 1)


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST"), ("kmnist", "KMNIST")])
def test_mnist_family(tmp_path, name, folder):
    (xtr, ytr), (xte, yte) = write_mnist(tmp_path, folder)
    tr = build_dataset(name, "train", data_dir=tmp_path, augment=False)
    va = build_dataset(name, "val", data_dir=tmp_path)
    te = build_dataset(name, "test", data_dir=tmp_path)
    assert (len(tr), len(va), len(te)) == (27, 3, 10)
    x, y = va[1]  # val = the last 10 % of the training file
    assert x.shape == (1, 28, 28) and y == ytr[28]
    torch.testing.assert_close(_unnormalise(x, va.info)[0], torch.from_numpy(xtr[28]).float() / 255, atol=1e-5, rtol=0)
    x, y = te[4]
    assert y == yte[4]
    torch.testing.assert_close(_unnormalise(x, te.info)[0], torch.from_numpy(xte[4]).float() / 255, atol=1e-5, rtol=0)
    assert tr.info.num_classes == 10 and tr.info.in_chans == 1
    rts = build_dataset(name, "train", data_dir=tmp_path, distort="rts", train_size=5, augment=False)
    assert len(rts) == 5 and rts[0][0].shape == (1, 42, 42)
    up = build_dataset(name, "test", data_dir=tmp_path, image_size=32)
    assert up[0][0].shape == (1, 32, 32) and up.info.image_size == (32, 32)


@pytest.mark.parametrize("hundred", [False, True])
def test_cifar(tmp_path, hundred):
    name = "cifar100" if hundred else "cifar10"
    (xtr, ytr), (xte, yte) = write_cifar(tmp_path, hundred)
    te = build_dataset(name, "test", data_dir=tmp_path)
    x, y = te[2]
    assert x.shape == (3, 32, 32) and y == yte[2]
    torch.testing.assert_close(_unnormalise(x, te.info), torch.from_numpy(xte[2]).float() / 255, atol=1e-5, rtol=0)
    assert te.info.num_classes == (100 if hundred else 10)
    assert te.info.class_names[3] == ("c3" if hundred else "k3")
    tr = build_dataset(name, "train", data_dir=tmp_path)  # default augmentation: crop + flip
    assert len(tr) == 27 and tr[0][0].shape == (3, 32, 32)
    plain = build_dataset(name, "train", data_dir=tmp_path, augment=False)
    torch.testing.assert_close(_unnormalise(plain[4][0], plain.info), torch.from_numpy(xtr[4]).float() / 255,
                               atol=1e-5, rtol=0)
    torch.manual_seed(0)
    assert any(not torch.equal(tr[4][0], plain[4][0]) for _ in range(5))  # augmentation does something
    with pytest.raises(ConfigError, match="grayscale"):
        build_dataset(name, "test", data_dir=tmp_path, distort="rotate")


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_files_of_every_pickle_protocol_are_read(tmp_path, protocol):
    """The restricted unpickler admits numpy arrays as protocol 2 (the originals) and 5 write them."""
    _, (xte, yte) = write_cifar(tmp_path, protocol=protocol)
    te = build_dataset("cifar10", "test", data_dir=tmp_path)
    assert [te[i][1] for i in range(N_TEST)] == yte.tolist() and te.info.class_names[9] == "k9"
    torch.testing.assert_close(_unnormalise(te[1][0], te.info), torch.from_numpy(xte[1]).float() / 255, atol=1e-5,
                               rtol=0)


class _Payload:
    """What a planted file carries: unpickling it would run ``exec`` (here: write a marker file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


@pytest.mark.parametrize("hundred, planted", [(False, "batches.meta"), (True, "meta"), (False, "test_batch")])
def test_planted_pickle_is_refused_and_runs_nothing(tmp_path, hundred, planted):
    name = "cifar100" if hundred else "cifar10"
    write_cifar(tmp_path, hundred)
    folder = tmp_path / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    marker = tmp_path / "payload-ran"
    with open(folder / planted, "wb") as f:
        pickle.dump({"label_names": _Payload(marker), "fine_label_names": _Payload(marker)}, f)
    get_dataset_info(name, data_dir=tmp_path)  # cifar100 reads its class names from meta here
    with pytest.raises(DatasetNotFoundError) as info:
        build_dataset(name, "test", data_dir=tmp_path)
    message = str(info.value)
    assert str(folder / planted) in message and "refused to load builtins.exec" in message
    assert "\n" not in message and not marker.exists()


def test_svhn(tmp_path):
    (xtr, ytr), (xte, yte) = write_svhn(tmp_path)
    te = build_dataset("svhn", "test", data_dir=tmp_path)
    assert len(te) == N_TEST
    x, y = te[0]
    assert y == 0 == yte[0]  # label 10 read as 0
    torch.testing.assert_close(_unnormalise(x, te.info), torch.from_numpy(xte[0]).float() / 255, atol=1e-5, rtol=0)
    assert [te[i][1] for i in range(N_TEST)] == yte.tolist()
    assert len(build_dataset("svhn", "val", data_dir=tmp_path)) == 3


def test_subsets_are_seeded(tmp_path):
    write_mnist(tmp_path, "MNIST")
    a = build_dataset("mnist", "train", data_dir=tmp_path, train_size=10, seed=1)
    b = build_dataset("mnist", "train", data_dir=tmp_path, train_size=10, seed=1)
    c = build_dataset("mnist", "train", data_dir=tmp_path, train_size=10, seed=2)
    assert len(a) == 10 and torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "kmnist", "cifar10", "cifar100", "svhn"])
def test_missing_files_say_what_and_where(tmp_path, name):
    with pytest.raises(DatasetNotFoundError) as err:
        build_dataset(name, "train", data_dir=tmp_path)
    msg = str(err.value)
    assert name in msg and str(tmp_path) in msg and "download" in msg
    assert isinstance(err.value, FileNotFoundError)
    expected = {"mnist": "train-images-idx3-ubyte", "cifar10": "data_batch_1", "svhn": "train_32x32.mat"}.get(name)
    if expected:
        assert expected in msg


def test_failed_download_becomes_dataset_not_found(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(tvd, "MNIST", offline)
    with pytest.raises(DatasetNotFoundError, match="download .* failed"):
        build_dataset("mnist", "train", data_dir=tmp_path, download=True)


def test_corrupt_file(tmp_path):
    write_mnist(tmp_path, "KMNIST")
    (tmp_path / "KMNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    with pytest.raises(DatasetNotFoundError, match="could not read"):
        build_dataset("kmnist", "test", data_dir=tmp_path)


def test_registry():
    assert list_datasets() == sorted(
        ["cluttered-digits", "digits", "mnist", "fashion-mnist", "kmnist", "cifar10", "cifar100", "svhn"]
    )
    assert list_datasets("cifar*") == ["cifar10", "cifar100"]
    with pytest.raises(ConfigError, match="did you mean mnist"):
        get_dataset_info("mnits")
    with pytest.raises(ConfigError, match="split"):
        build_dataset("digits", "training")
    with pytest.raises(ConfigError, match="distort"):
        build_dataset("digits", "train", distort="shear")
    info = get_dataset_info("mnist", distort="rts")
    assert info.image_size == (42, 42) and info.num_classes == 10
    assert get_dataset_info("cifar100").num_classes == 100


def test_cli_lists_datasets(capsys):
    from convattn.cli import main

    assert main(["list", "datasets", "*mnist"]) == 0
    assert capsys.readouterr().out.split() == ["fashion-mnist", "kmnist", "mnist"]
