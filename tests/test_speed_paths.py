"""The CPU fast paths change speed, never results: micro-batches, the thread tuner, workers."""

import numpy as np
import pytest

from colhead.extract._embedder import Embedder, ThreadTuner
from colhead.extract._extractor import workers_and_threads


def test_thread_tuner_explores_then_keeps_the_faster_option_and_rechecks():
    tuner = ThreadTuner((2, 1), every=8, probes=2)
    speed = {1: 0.01, 2: 0.03}  # seconds per image: 1 thread is faster here
    picks = []
    for _ in range(40):
        with tuner.threads():
            picks.append(tuner.current)
        tuner.record(speed[tuner.current] * 8, 8)
    assert picks[:6] == [1, 1, 1, 2, 2, 2]  # warm-up + 2 measured slices each
    assert picks[6:].count(1) > picks[6:].count(2) >= 2  # mostly the faster, re-checked
    speed = {1: 0.05, 2: 0.01}  # the load changed: now 2 threads win
    for _ in range(40):
        with tuner.threads():
            picks.append(tuner.current)
        tuner.record(speed[tuner.current] * 8, 8)
    assert picks[-10:].count(2) >= 8


def test_cpu_workers_leave_the_column_the_other_cores():
    import torch

    n, threads = workers_and_threads(None, torch.device("cpu"))
    assert n >= 1 and threads >= 1
    assert workers_and_threads(0, torch.device("cpu"))[0] == 0
    assert workers_and_threads(3, torch.device("cuda"))[1] is None


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_thread_counts_and_the_tuner_give_the_same_vectors(precision):
    import torch

    from colhead._device import cpu_has_bf16

    if precision == "bf16" and not cpu_has_bf16():
        pytest.skip("no native bf16 on this CPU")
    emb = Embedder("tiny", device="cpu", precision=precision)
    x = np.random.default_rng(0).integers(0, 256, (21, 32, 32, 3), dtype=np.uint8)
    plain = emb.forward(x)
    emb.tuner = ThreadTuner((1, max(2, torch.get_num_threads())), every=2, probes=1)
    tuned = [emb.forward(x) for _ in range(3)]
    emb.tuner = None
    for t in tuned:
        np.testing.assert_array_equal(t, plain)
    assert plain.shape == (21, emb.dim)


def test_thread_tuner_rechecks_a_losing_option_ever_more_rarely():
    tuner = ThreadTuner((1, 2), every=4, probes=1, max_every=64)
    picks = []
    for _ in range(300):
        with tuner.threads():
            picks.append(tuner.current)
        tuner.record({1: 0.01, 2: 0.2}[tuner.current] * 8, 8)  # 2 threads collapsed: 20x slower
    rechecks = picks[4:].count(2)
    assert 3 <= rechecks <= 8  # after 4, 8, 16, 32, then every 64 slices
