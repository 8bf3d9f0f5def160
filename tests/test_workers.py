"""The pipe between the learner and its workers: arrays travel out of band, whole and unchanged."""
import multiprocessing
import threading

import numpy as np

from pong_pg import EpisodeSums
from workers import receive_arrays, send_arrays


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
