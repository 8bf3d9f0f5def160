"""Frame preprocessing: a 210x160x3 Pong frame -> an 80x80 binary image -> a sparse difference frame.

The policy reads the difference between consecutive preprocessed frames, so it can see motion.
A difference frame has a few dozen nonzero pixels out of 6,400, so we keep it sparse: the flat
indices of the pixels that changed and their values (+1 appeared, -1 disappeared).
"""
import numpy as np

SIDE = 80                     # preprocessed frames are SIDE x SIDE
D = SIDE * SIDE               # input dimension of the policy network
BACKGROUND = (144, 109)       # red-channel values of the two background shades


def preprocess(frame):
    """210x160x3 uint8 frame -> 80x80 bool image: True where a paddle or the ball is."""
    img = frame[35:195:2, ::2, 0]                       # crop the field, downsample by 2, red channel
    return (img != BACKGROUND[0]) & (img != BACKGROUND[1])   # erase background, everything else is 1


def sparse_difference(current, previous):
    """Two 80x80 bool images -> (indices int16, values int8) of the nonzero pixels of current - previous.

    previous=None (an episode's first frame) gives an empty difference."""
    if previous is None:
        return np.empty(0, np.int16), np.empty(0, np.int8)
    diff = current.view(np.int8).ravel() - previous.view(np.int8).ravel()   # values in {-1, 0, 1}
    idx = np.flatnonzero(diff)
    return idx.astype(np.int16), diff[idx]


def dense_difference(current, previous):
    """The same difference frame as a dense float vector of length 6400 (the 2016 script's input)."""
    if previous is None:
        return np.zeros(D)
    return current.astype(float).ravel() - previous.astype(float).ravel()
