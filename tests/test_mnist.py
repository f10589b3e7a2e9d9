"""The MNIST experiment: on the shipped sample always, on the full data when it is there."""


import pytest

import fnlearn as fl
from experiments import mnist


def test_trains_on_the_shipped_sample_and_writes_the_pictures(tmp_path, capsys):
    result = mnist.main(["--source", "sample", "--epochs", "2", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "MNIST from sample: 6000 train, 1000 test images" in out
    assert "Epoch 2/2" in out and "188/188 - " in out and "val_accuracy: " in out
    # Chance is 10%; two epochs on 6000 digits reach about 92%.
    assert result["test_accuracy"] > 0.85
    assert f"Test accuracy: {result['test_accuracy'] * 100:.2f}%" in out
    for name in ("training_curves.png", "confusion_matrix.png", "misclassified.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_article_recipe_reaches_97_5_percent_on_the_full_data(seed, capsys, full_mnist):
    result = mnist.main(["--seed", str(seed), "--no-plots", "--data-dir", str(full_mnist)])
    assert result["source"] == "idx"
    assert len(result["history"].epoch) == 5
    print(capsys.readouterr().out)
    assert result["test_accuracy"] >= 0.975


def test_resume_and_export_flags(tmp_path, capsys):
    import jax
    import numpy as np

    import fnlearn as fl

    common = ["--source", "sample", "--no-plots", "--out", str(tmp_path)]
    straight = mnist.main([*common, "--epochs", "2"])
    mnist.main([*common, "--epochs", "1", "--checkpoint-dir", str(tmp_path / "ck")])
    resumed = mnist.main([*common, "--epochs", "2", "--resume", "--checkpoint-dir",
                          str(tmp_path / "ck"), "--export", str(tmp_path / "model.fnx")])
    assert "resuming from" in capsys.readouterr().out
    for a, b in zip(jax.tree.leaves(straight["state"].params),
                    jax.tree.leaves(resumed["state"].params)):
        np.testing.assert_array_equal(a, b)
    (_, _), (x_test, _) = fl.load_mnist(source="sample")
    served = fl.load_exported(tmp_path / "model.fnx")(x_test[:5])
    expected = fl.predict(fl.models.article_mlp(), resumed["state"].params, x_test[:5])
    np.testing.assert_array_equal(served, expected)


def test_fashion_mnist_in_one_flag_with_logs(tmp_path, capsys):
    import numpy as np

    from fnlearn.data.idx import FILE_NAMES

    rng = np.random.default_rng(0)
    sizes = {"train": 64, "test": 32}
    for key, name in FILE_NAMES.items():
        count = sizes[key.split("_")[0]]
        if key.endswith("images"):
            array, magic = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8), 2051
        else:
            array, magic = (np.arange(count) % 10).astype(np.uint8), 2049
        header = np.array([magic, *array.shape], ">u4").tobytes()
        (tmp_path / name).write_bytes(header + array.tobytes())
    logdir = tmp_path / "logs"
    args = ["--dataset", "fashion_mnist", "--source", "idx", "--data-dir", str(tmp_path),
            "--epochs", "2", "--no-plots", "--logdir", str(logdir)]
    # Not the official files: the digest check refuses them unless told they are one's own.
    with pytest.raises(fl.DataError, match="its contents differ from the official files"):
        mnist.main(args)
    result = mnist.main([*args, "--no-verify"])
    assert "Fashion-MNIST from idx: 64 train, 32 test images" in capsys.readouterr().out
    assert result["dataset"] == "fashion_mnist" and len(result["history"].epoch) == 2
    rows = (logdir / "training.csv").read_text().splitlines()
    assert rows[0] == "epoch,accuracy,loss,val_accuracy,val_loss" and len(rows) == 3
    assert len(list((logdir / "validation").glob("events.out.tfevents.*"))) == 1
