"""`ancis-fast synth` writes a dataset the readers load back."""
import argparse

import numpy as np

from ancis_fast.data import cli as data_cli
from ancis_fast.data.layouts import open_dataset
from ancis_fast.data.synthetic import SynthConfig, generate


def _run(argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    data_cli.register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_synth_writes_seeded_dsb_dataset(tmp_path):
    assert _run(["synth", "--out", str(tmp_path), "--n", "3", "--size", "64x80", "--seed", "4", "--workers", "1",
                 "--quiet", "--count", "5,20"]) == 0
    dataset = open_dataset(tmp_path)
    assert len(dataset) == 3
    config = SynthConfig(size=(64, 80), count=(5, 20))
    for i in range(3):
        expected = generate((4, i), config)
        read = dataset[i]
        assert read.name == f"synth_4_{i:06d}"
        np.testing.assert_array_equal(read.labels, expected.labels)
        np.testing.assert_array_equal(read.image, expected.image)


def test_synth_label_layout_and_bad_arguments(tmp_path, capsys):
    assert _run(["synth", "--out", str(tmp_path), "--n", "2", "--size", "64", "--layout", "labels", "--workers", "1",
                 "--quiet"]) == 0
    assert len(open_dataset(tmp_path)) == 2
    assert _run(["synth", "--out", str(tmp_path), "--n", "2", "--diameter", "9,3", "--quiet"]) == 2
    assert "diameter" in capsys.readouterr().err
