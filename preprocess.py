"""Frame preprocessing: a 210x160x3 Pong frame -> an 80x80 binary image -> a sparse difference frame.

The policy reads the difference between consecutive preprocessed frames, so it can see motion.
A difference frame has a few dozen nonzero pixels out of 6,400, so we keep it sparse: the flat
indices of the pixels that changed and their values (+1 appeared, -1 disappeared).

Plain first: preprocess() is the 2016 recipe on the RGB frame, and dense_difference() the difference
of two such images as the 2016 loop (pong_pg.py --plain) reads it, x = cur_x - prev_x; sparse_difference()
is the same difference kept sparse. The fast trainer computes the same sparse difference frames from
ALE's palette-index screen (screen_pixels, screen_difference, tested equal to sparse_difference), where
only the pixels whose palette index changed are looked at.
"""
import numpy as np

SIDE = 80                     # preprocessed frames are SIDE x SIDE
D = SIDE * SIDE               # input dimension of the policy network
BACKGROUND = (144, 109)       # red-channel values of the two background shades
FIELD = slice(35, 195)        # the rows of the playing field (the 2016 crop: no score, no bottom border)


def preprocess(frame):
    """210x160x3 uint8 frame -> 80x80 bool image: True where a paddle or the ball is."""
    img = frame[FIELD][::2, ::2, 0].ravel()             # crop the field, downsample by 2, red channel
    image = img != BACKGROUND[0]                        # erase both background shades,
    image &= img != BACKGROUND[1]                       # everything else (paddles, ball) is 1
    return image.reshape(SIDE, SIDE)


UNKNOWN = 2                   # a colour table's entry for a palette index not seen yet
UNKNOWN_BYTE = bytes([UNKNOWN])


def new_color_table():
    """Palette index -> 1 (paddle or ball), 0 (background) or UNKNOWN: filled in as colours appear."""
    return np.full(256, UNKNOWN, np.uint8)



def screen_pixels(screen, out):
    """ALE's palette-index screen (210x160 uint8) -> out (6400 uint8): the field, every second row and
    column, as preprocess() crops it. Palette indices skip the RGB conversion and are a third of the bytes."""
    # every second row of the field, each pair of columns (2c, 2c+1) read as one little-endian 16-bit
    # number; casting it to 8 bits keeps the low byte, which is column 2c
    pairs = screen.view("<u2")[FIELD][::2]
    np.copyto(out.reshape(SIDE, SIDE), pairs, casting="unsafe")


def learn_colors(colors, pixels, screen, rgb_frame):
    """Fill in colors for the palette indices among pixels not seen yet, from their red value in the RGB
    frame rgb_frame() of the same screen (every palette index has one colour)."""
    unknown = np.unique(pixels[colors.take(pixels) == UNKNOWN])
    if len(unknown):
        frame = rgb_frame()
        for index in unknown:
            colors[index] = frame[screen == index][0, 0] not in BACKGROUND


def screen_difference(pixels, previous, colors, screen, rgb_frame):
    """The sparse difference frame between two frames given as screen_pixels(): the same
    (flat indices, turned_on) as sparse_difference(preprocess(frame), preprocess(previous_frame)).

    Only pixels whose palette index changed can change, so only those (a few dozen) go through the
    colour table. Every index in previous must be in colors already; new ones in pixels are learned
    from rgb_frame() (screen: the palette screen pixels came from)."""
    changed = (pixels != previous).nonzero()[0]
    now = colors.take(pixels.take(changed))
    if UNKNOWN_BYTE in now.tobytes():                      # UNKNOWN in now (a bytes search: cheap)
        learn_colors(colors, pixels, screen, rgb_frame)
        now = colors.take(pixels.take(changed))
    keep = now != colors.take(previous.take(changed))      # paddle/ball <-> background
    return changed[keep], now[keep].view(bool)


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
