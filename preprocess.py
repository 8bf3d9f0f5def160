"""Frame preprocessing: a 210x160x3 Pong frame -> an 80x80 binary image -> a sparse difference frame.

The policy reads the difference between consecutive preprocessed frames, so it can see motion.
A difference frame has a few dozen nonzero pixels out of 6,400, so we keep it sparse: the flat
indices of the pixels that changed and their values (+1 appeared, -1 disappeared).
"""
import numpy as np

SIDE = 80                     # preprocessed frames are SIDE x SIDE
D = SIDE * SIDE               # input dimension of the policy network
BACKGROUND = (144, 109)       # red-channel values of the two background shades
FIELD = slice(35, 195)        # the rows of the playing field (the 2016 crop: no score, no bottom border)


def preprocess(frame):
    """210x160x3 uint8 frame -> 80x80 bool image: True where a paddle or the ball is."""
    img = frame[FIELD][::2, ::2, 0].ravel()             # crop the field, downsample by 2, red channel
    image = img != BACKGROUND[0]                        # (ravel first: a contiguous copy compares 2x faster)
    image &= img != BACKGROUND[1]                       # erase background, everything else is 1
    return image.reshape(SIDE, SIDE)


UNKNOWN = 2                   # a colour table's entry for a palette index not seen yet


def new_color_table():
    """Palette index -> 1 (paddle or ball), 0 (background) or UNKNOWN: filled in as colours appear."""
    return np.full(256, UNKNOWN, np.uint8)


def preprocess_screen(screen, colors, rgb_frame):
    """The same 80x80 bool image as preprocess(), read from ALE's palette-index screen (210x160 uint8):
    no RGB conversion, a third of the bytes. colors: a table from new_color_table(); the first time a
    palette index shows up in the field, rgb_frame() gives the RGB frame to learn its red value from."""
    pixels = screen[FIELD][::2, ::2].ravel()            # crop the field, downsample by 2
    image = colors.take(pixels)
    if image.max() == UNKNOWN:
        frame, field = rgb_frame(), screen[FIELD]
        for index in np.unique(field[colors[field] == UNKNOWN]):
            red = frame[screen == index][0, 0]                      # every palette index has one colour
            colors[index] = red not in BACKGROUND
        image = colors.take(pixels)
    return image.view(bool).reshape(SIDE, SIDE)


def sparse_difference(current, previous):
    """Two 80x80 bool images -> (flat indices, turned_on) of the pixels where current - previous is
    nonzero: the difference is +1 where turned_on, -1 elsewhere. previous=None (an episode's first
    frame) gives an empty difference."""
    if previous is None:
        return np.empty(0, np.intp), np.empty(0, bool)
    current = current.ravel()
    idx = np.flatnonzero(current != previous.ravel())   # pixels that changed
    return idx, current[idx]


SIGN = np.array([-1, 1], np.float32)


def difference_values(turned_on):
    """turned_on (bool) -> the difference values as float32: +1 or -1."""
    return SIGN.take(turned_on.view(np.int8))


def dense_difference(current, previous):
    """The same difference frame as a dense float vector of length 6400 (the 2016 script's input)."""
    if previous is None:
        return np.zeros(D)
    return current.astype(float).ravel() - previous.astype(float).ravel()
