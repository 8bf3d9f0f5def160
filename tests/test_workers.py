"""The pipe between the learner and its workers: arrays travel out of band, whole and unchanged, and
patched weights equal the learner's."""
import multiprocessing
import threading

import numpy as np

from pong_pg_fast import EpisodeSums, WeightsSnapshot
from workers import WorkerPool, receive_arrays, send_arrays


def test_arrays_sent_out_of_band_arrive_whole_aligned_and_equal():
    rng = np.random.default_rng(0)
    sums = EpisodeSums(pixels=np.arange(5, 4000, 7, dtype=np.int16),            # odd byte count before
                       sums_W1T=rng.standard_normal((566, 400)).astype(np.float32),   # 0.9 MB: many reads
                       sums_W2=rng.standard_normal((2, 200)), sum_R=-3.5, sum_R2=12.25, steps=900, score=-21)
    weights = {"W1T": rng.standard_normal((6400, 200)).astype(np.float32), "W2": np.float32([1, 2]),
               "empty": np.empty((0, 3)), "strided": np.arange(10)[::2]}       # in band: not contiguous
    ours, theirs = multiprocessing.Pipe()
    for sent in (sums, weights):
        sender = threading.Thread(target=send_arrays, args=(theirs, sent))       # a big send blocks till read
        sender.start()
        got = receive_arrays(ours)
        sender.join()
        items = vars(sent).items() if isinstance(sent, EpisodeSums) else sent.items()
        for name, value in items:
            received = getattr(got, name) if isinstance(sent, EpisodeSums) else got[name]
            np.testing.assert_array_equal(received, value, err_msg=name)
            if isinstance(value, np.ndarray):
                assert received.dtype == value.dtype and received.flags.aligned, name
    ours.close()
    theirs.close()


def weights_played_with(env, weights, rng, greedy=False):
    """A 'game' that sends back the weights the worker holds."""
    return {name: np.array(value) for name, value in weights.items()}


def test_workers_patched_after_updates_hold_the_learners_weights_exactly():
    """Workers a few versions behind are sent only the rows the updates since changed (a patch), or
    everything where a version's changes are not known: each then plays with exactly the weights of
    the version it was handed."""
    rng = np.random.default_rng(0)
    W1T, W2 = rng.standard_normal((6400, 8)).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    changed = {}
    policy = WeightsSnapshot(0, {"W1T": W1T.copy(), "W2": W2.copy()}, changed)
    policies = [policy]                                      # policies[v]: version v
    with WorkerPool(3, weights_played_with, 0, 0) as pool:
        pool.wait_until_ready(lambda: False)
        for step in range(12):
            for worker in pool.idle()[: 1 + step % 3]:       # some workers wait: they fall behind
                pool.start(worker, step, policy)
            while pool.busy:
                worker, weights, played = pool.next_result(timeout=30)
                for name in weights:
                    np.testing.assert_array_equal(weights[name], policies[played.version].weights[name],
                                                  err_msg=name)
            # an update: a few rows of W1T and all of W2 change
            rows = rng.choice(6400, 50, replace=False)
            W1T[rows] += 1
            W2 += 1
            mask = np.zeros(6400, bool)
            mask[rows] = True
            if step != 5:                                    # version 6's changes are forgotten
                changed[step + 1] = mask
            policy = WeightsSnapshot(step + 1, {"W1T": W1T.copy(), "W2": W2.copy()}, changed)
            policies.append(policy)
    sent = [(p.version, held, patch is not None) for p in policies for held, patch in p.patches.items()]
    assert any(patched and version - held > 1 for version, held, patched in sent)      # patched, behind by 2+
    assert any(not patched and held < 6 <= version for version, held, patched in sent)   # all sent
