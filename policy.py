"""The policy network and its learning rule, in numpy.

    x (6400, difference frame) -> h = relu(W1 @ x) (H) -> p = sigmoid(W2 @ h) = P(UP)

REINFORCE: the gradient of  sum_t A_t * log pi(a_t | x_t),  A_t = the standardized discounted return.
With the fake label y_t = 1 for UP, 0 for DOWN:  d log pi / d logit = y_t - p_t.

Two versions of the same math live here:
- the dense one, as the 2016 script wrote it (reference and tests),
- the sparse one the trainer uses: a difference frame has a few dozen nonzero pixels, so W1 @ x
  and the W1 gradient touch only those columns of W1.
"""
import math

import numpy as np

from preprocess import D

CHUNK_STEPS = 128    # steps per slice in the sparse backward pass (fastest measured; bounds memory)


def init_model(hidden, rng):
    """Xavier-style initialisation, float32. W1 is (hidden, 6400), W2 is (hidden,)."""
    return {"W1": (rng.standard_normal((hidden, D)) / np.sqrt(D)).astype(np.float32),
            "W2": (rng.standard_normal(hidden) / np.sqrt(hidden)).astype(np.float32)}


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))    # clipped: no overflow; sigmoid(50) is 1 in float64


def discount_rewards(rewards, gamma):
    """R_t = r_t + gamma * R_{t+1}, with the running sum reset at every point scored (r != 0)."""
    returns = np.zeros(len(rewards))
    running = 0.0
    for t in reversed(range(len(rewards))):
        if rewards[t] != 0:
            running = 0.0           # a point ended here: earlier actions are not credited for later points
        running = running * gamma + rewards[t]
        returns[t] = running
    return returns


def standardize(returns):
    """Zero mean, unit standard deviation over all steps of the batch."""
    return (returns - returns.mean()) / max(returns.std(), 1e-8)


# ---------------------------------------------------------------- dense reference (the 2016 script)

def forward_dense(model, x):
    """x (6400,) -> (p = P(UP), h). The 2016 policy_forward."""
    h = np.maximum(model["W1"] @ x, 0)           # ReLU
    return sigmoid(model["W2"] @ h), h


def backward_dense(model, hs, xs, dlogits):
    """The 2016 policy_backward. hs (T,H), xs (T,6400), dlogits (T,) = A_t * (y_t - p_t)."""
    dW2 = hs.T @ dlogits                          # d/dW2 of sum_t dlogit_t * W2.h_t
    dh = np.outer(dlogits, model["W2"])           # back through W2
    dh[hs <= 0] = 0                               # back through ReLU
    dW1 = dh.T @ xs
    return {"W1": dW1, "W2": dW2}


# ---------------------------------------------------------------- sparse forward and backward

def forward_sparse(W1T, W2, idx, vals):
    """P(UP) for one sparse difference frame. W1T = W1.T as a contiguous (6400, H) array,
    so the columns of W1 that the nonzero pixels select are contiguous rows here."""
    h = vals.dot(W1T.take(idx, axis=0))           # = W1 @ x, touching only nonzero pixels
    np.maximum(h, 0, out=h)                       # ReLU
    return 1.0 / (1.0 + math.exp(-min(max(float(h.dot(W2)), -50.0), 50.0)))   # P(UP), clipped like sigmoid


def accumulate_sparse_gradients(W1T, W2, indptr, idx, vals, up, weights, dW1T, dW2):
    """Add the gradients of  sum_t weights[t, k] * log pi(a_t | x_t)  for each column k of weights (T, K)
    into dW1T (6400, K*H; column k*H + i is hidden unit i for weighting k) and dW2 (K, H).

    W1T = W1.T as a contiguous (6400, H) array. The frames are sparse in CSR form: step t's pixels are
    idx[indptr[t]:indptr[t+1]] with values vals[...]; up[t] is 1 if the action was UP.

    Slices of CHUNK_STEPS steps touch a few hundred distinct pixels: we gather those columns of W1
    into a small dense problem, so the work is a few small matrix products per slice."""
    H, K, dtype = W1T.shape[1], weights.shape[1], W1T.dtype
    column = np.empty(D, np.intp)                                    # pixel -> its column in X
    for a in range(0, len(up), CHUNK_STEPS):
        b = min(a + CHUNK_STEPS, len(up))
        ea, eb = indptr[a], indptr[b]
        rows = np.repeat(np.arange(b - a), np.diff(indptr[a:b + 1]))  # step of each nonzero pixel
        touched = np.zeros(D, bool)
        touched[idx[ea:eb]] = True
        pixels = touched.nonzero()[0]                                # the pixels this slice touches
        column[pixels] = np.arange(len(pixels))                      # (a table: 2x faster than np.unique)
        X = np.zeros((b - a, len(pixels)), dtype)                    # the slice's frames, those pixels only
        X[rows, column[idx[ea:eb]]] = vals[ea:eb]
        h = np.maximum(X @ W1T[pixels], 0)                           # h_t = relu(W1 x_t)
        p = sigmoid(h @ W2)
        dlogit = ((up[a:b] - p)[:, None] * weights[a:b]).astype(dtype)   # (steps, K): w_tk * (y_t - p_t)
        dW2 += dlogit.T @ h                                          # dW2_k = sum_t dlogit_tk h_t
        dh = (dlogit[:, :, None] * W2) * (h > 0)[:, None, :]         # back through W2 and the ReLU
        dW1T[pixels] += X.T @ dh.reshape(b - a, K * H)               # dW1_k = sum_t dh_tk x_t^T


def sparse_backward(W1, W2, indptr, idx, vals, up, weights):
    """The same gradients as new arrays: dW1 (K, H, 6400) and dW2 (K, H), float64. They equal
    backward_dense with dlogits = weights[:, k] * (up - p), up to rounding."""
    H, K = W1.shape[0], weights.shape[1]
    dW1T, dW2 = np.zeros((D, K * H)), np.zeros((K, H))
    accumulate_sparse_gradients(np.ascontiguousarray(W1.T), W2, indptr, idx, vals, up, weights, dW1T, dW2)
    return dW1T.reshape(D, K, H).transpose(1, 2, 0), dW2


# ---------------------------------------------------------------- batch gradient and RMSProp

class BatchGradient:
    """Accumulates a batch of episodes and yields the REINFORCE gradient with returns standardized
    over the whole batch, without keeping the episodes.

    With A_t = (R_t - mean) / std over the batch and g_t = grad log pi(a_t | x_t):
        sum_t A_t g_t = (sum_t R_t g_t - mean * sum_t g_t) / std
    so each episode adds sum R g, sum g, sum R, sum R^2 and its step count when it arrives.
    The W1 sums are kept transposed, side by side: sums_W1T[:, :H] = (sum R g).T, [:, H:] = (sum g).T."""

    def __init__(self, hidden):
        self.sums_W1T = np.zeros((D, 2 * hidden))
        self.sums_W2 = np.zeros((2, hidden))
        self.reset()

    def reset(self):
        """Empty the batch, reusing the 20 MB of sums (a fresh allocation per update fragments memory)."""
        self.sums_W1T.fill(0)
        self.sums_W2.fill(0)
        self.sum_R = self.sum_R2 = 0.0
        self.steps = self.episodes = 0

    def add_episode(self, weights, frames, up, rewards, gamma):
        """weights = {"W1T", "W2"}: the weights the episode was played with; frames = (indptr, idx, vals)."""
        R = discount_rewards(rewards, gamma)
        accumulate_sparse_gradients(weights["W1T"], weights["W2"], *frames, up,
                                    np.stack([R, np.ones_like(R)], axis=1), self.sums_W1T, self.sums_W2)
        self.sum_R += R.sum(); self.sum_R2 += (R * R).sum()
        self.steps += len(R); self.episodes += 1

    def gradient(self):
        mean = self.sum_R / self.steps
        std = max(np.sqrt(max(self.sum_R2 / self.steps - mean * mean, 0.0)), 1e-8)
        H = self.sums_W2.shape[1]
        W1T = self.sums_W1T[:, :H] - mean * self.sums_W1T[:, H:]
        W1T /= std
        return {"W1": W1T.T,
                "W2": (self.sums_W2[0] - mean * self.sums_W2[1]) / std}

    def state(self):
        return dict(vars(self))

    @classmethod
    def from_state(cls, state):
        batch = cls.__new__(cls)
        vars(batch).update(state)
        return batch


def rmsprop_step(model, cache, grad, lr, decay, eps):
    """Gradient ascent with RMSProp: cache = decay*cache + (1-decay)*g^2; W += lr*g/(sqrt(cache)+eps)."""
    for k in model:
        g = grad[k].astype(model[k].dtype)
        cache[k] *= decay
        cache[k] += (1 - decay) * g * g
        step = np.sqrt(cache[k])
        step += eps
        np.divide(g, step, out=step)
        step *= lr
        model[k] += step
