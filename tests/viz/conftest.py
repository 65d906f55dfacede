import pytest


def _tiny_run(path, attention):
    from convattn.engine import TrainConfig, train

    cfg = TrainConfig(model="simple_cnn", attention=attention, dataset="cluttered-digits", train_size=32,
                      val_size=8, test_size=8, image_size=28, epochs=1, batch_size=32, out=str(path),
                      progress=False, tensorboard=False, device="cpu", seed=0)
    train(cfg)
    return path


@pytest.fixture(scope="session")
def cbam_run(tmp_path_factory):
    """A simple_cnn + CBAM run trained for one short epoch (config, metrics, checkpoints)."""
    return _tiny_run(tmp_path_factory.mktemp("runs") / "cbam", "cbam")


@pytest.fixture(scope="session")
def plain_run(tmp_path_factory):
    return _tiny_run(tmp_path_factory.mktemp("runs") / "plain", None)
