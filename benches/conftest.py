"""Shared fixtures of the benchmark suites."""

import os
import random

import pytest

#: Bytes per value in the commit benchmarks: small configuration records.
VALUE_SIZE = 100


def make_keys(count, seed=7):
    """Return ``count`` distinct keys shaped like agent configuration."""
    rng = random.Random(seed)
    keys = [f"/vnf-agent/bench/config/item/{i:08d}".encode()
            for i in range(count)]
    rng.shuffle(keys)
    return keys


@pytest.fixture
def bench_dir(tmp_path):
    """A directory on the same disk as the test's temporary files."""
    path = tmp_path / "bench"
    os.makedirs(path)
    return path
