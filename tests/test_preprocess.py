import numpy as np

from preprocess import (
    BACKGROUND,
    UNKNOWN,
    dense_difference,
    difference_values,
    learn_colors,
    new_color_table,
    preprocess,
    screen_difference,
    screen_pixels,
    sparse_difference,
)


def test_preprocessed_frame_is_80x80_binary(real_frames):
    image = preprocess(real_frames[100])
    assert image.shape == (80, 80)
    assert image.dtype == bool


def test_background_is_erased_and_only_objects_remain(real_frames):
    frame = real_frames[100]
    red = frame[35:195:2, ::2, 0]
    image = preprocess(frame)
    assert not image[np.isin(red, BACKGROUND)].any()           # both background shades are 0
    assert image[~np.isin(red, BACKGROUND)].all()              # everything else is 1
    assert 0 < image.sum() < 400                               # paddles and ball: a few hundred pixels at most


def test_paddles_and_ball_are_present(real_frames):
    # columns 70-71 hold our (right) paddle, 8-9 the opponent's; the ball is in between
    images = [preprocess(frame) for frame in real_frames[60:]]
    assert all(image[:, 70:72].any() for image in images), "our paddle is always on the field"
    assert np.mean([image[:, 8:10].any() for image in images]) > 0.5, "the opponent's paddle (it can leave the crop)"
    assert any(image[:, 12:68].any() for image in images), "the ball"


def test_difference_at_episode_start_is_zero(real_frames):
    idx, on = sparse_difference(preprocess(real_frames[0]), None)
    assert len(idx) == 0 and len(on) == 0
    assert not dense_difference(preprocess(real_frames[0]), None).any()


def test_sparse_difference_equals_dense_difference(real_frames):
    nonzero = []
    for previous, current in zip(real_frames[:-1], real_frames[1:], strict=True):
        a, b = preprocess(previous), preprocess(current)
        dense = dense_difference(b, a)
        sparse = np.zeros(6400)
        idx, on = sparse_difference(b, a)
        sparse[idx] = difference_values(on)
        np.testing.assert_array_equal(sparse, dense)
        nonzero.append(len(idx))
    assert 0 < np.mean(nonzero) < 100                          # difference frames are sparse


def test_the_palette_screen_gives_the_same_difference_frames_as_the_rgb_frames(real_game):
    frames, screens = real_game
    colors, lookups = new_color_table(), []

    def rgb_frame(frame):
        lookups.append(1)
        return frame
    previous = np.empty(6400, np.uint8)
    screen_pixels(screens[0], previous)
    learn_colors(colors, previous, screens[0], lambda: rgb_frame(frames[0]))
    changed_pixels = []
    for before, frame, screen in zip(frames[:-1], frames[1:], screens[1:], strict=True):
        pixels = np.empty(6400, np.uint8)
        screen_pixels(screen, pixels)
        idx, on = screen_difference(pixels, previous, colors, screen, lambda frame=frame: rgb_frame(frame))
        expected_idx, expected_on = sparse_difference(preprocess(frame), preprocess(before))
        np.testing.assert_array_equal(idx, expected_idx)
        np.testing.assert_array_equal(on, expected_on)
        changed_pixels.append(len(idx))
        previous = pixels
    assert np.mean(changed_pixels) > 10
    # a colour is learned from the frame it first appears in, then read from the table
    seen = np.unique(np.concatenate([screen[35:195:2, ::2].ravel() for screen in screens]))
    np.testing.assert_array_equal(np.flatnonzero(colors != UNKNOWN), seen)
    assert 2 <= len(lookups) <= len(seen)      # the first frame, and colours that first appear later
