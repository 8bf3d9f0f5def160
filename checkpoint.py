"""Pickle checkpoints that are written atomically and loaded safely.

Saving: arrays are stored as (dtype, shape, bytes), so the pickle holds only plain Python values
(dict, list, tuple, str, bytes, int, float, bool, None). It is written to a temporary file, flushed
to disk, then renamed over the old one: a crash mid-save leaves the previous checkpoint whole.

Loading: pickle can run code named inside the file. Our unpickler refuses every global name but
numpy's own array reconstruction, so only plain values and arrays load; a file that tries to call
anything else (os.system, ...) is rejected before it runs. That admits the 2016 script's agent files
too (save.p: a pickled {'W1': array, 'W2': array}, from Python 2 or 3), which load() turns into an
agent with float32 weights.
"""
import codecs
import io
import os
import pickle
import secrets

import numpy as np

try:
    import fcntl  # POSIX
except ImportError:
    fcntl = None
try:
    import msvcrt  # Windows
except ImportError:
    msvcrt = None

FORMAT = "pong_pg checkpoint"
VERSION = 1
TEMPORARY_PREFIX = ".tmp-"
LOCK_FILE = ".lock"


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message is one line for the user."""


def _encode(value):
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.dtype.str, "shape": value.shape, "data": value.tobytes()}
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _decode(value):
    if isinstance(value, dict) and "__ndarray__" in value:
        array = np.frombuffer(value["data"], dtype=np.dtype(value["__ndarray__"]))
        return array.reshape(value["shape"]).copy()
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    return value


class _Forbidden(pickle.UnpicklingError):
    pass


def _array_globals():
    """The names a pickle of plain numpy arrays refers to, and nothing else: numpy's array
    reconstruction (under its numpy 1 and numpy 2 module names), and the codec with which Python 3
    writes bytes in pickle protocol 2."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:                                 # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return {("numpy.core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): codecs.encode}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        allowed = _array_globals()
        if (module, name) in allowed:
            return allowed[module, name]
        raise _Forbidden(f"it refers to {module}.{name}, which neither a checkpoint nor an agent file contains")


def agent_from_2016(content, path):
    """The 2016 script's model {'W1': (H, 6400), 'W2': (H,)} as an agent: float32 weights, H hidden units."""
    if set(content) != {"W1", "W2"}:
        raise CheckpointError(f"{path} is not an agent file: it holds {sorted(map(str, content))}, not W1 and W2")
    W1, W2 = content["W1"], content["W2"]
    for name, array in content.items():
        if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.floating):
            raise CheckpointError(f"{path} is not an agent file: its {name} is not an array of floats")
    if W1.ndim != 2 or W1.shape[1] != 6400 or W2.shape != (W1.shape[0],):
        raise CheckpointError(f"{path} holds weights of shapes W1 {W1.shape}, W2 {W2.shape}: they do not fit "
                              f"6400 inputs (W1 must be (H, 6400) and W2 (H,))")
    return {"model": {"W1": np.ascontiguousarray(W1, np.float32), "W2": np.ascontiguousarray(W2, np.float32)},
            "hyper": {"hidden": W1.shape[0]}}


def save(path, state):
    """Write state (a dict of arrays, numbers, strings) to path atomically."""
    write_atomically(path, pickle.dumps({"format": FORMAT, "version": VERSION, "state": _encode(state)},
                                        protocol=pickle.HIGHEST_PROTOCOL))


def save_2016(path, model):
    """Write the weights as the 2016 script saves them, a plain pickle of {'W1', 'W2'} in float64,
    which its pickle.load and forward pass take as they are."""
    write_atomically(path, pickle.dumps({k: model[k].astype(np.float64) for k in ("W1", "W2")}, protocol=2))


def write_atomically(path, payload):
    """Write payload to a temporary file beside path, flush it to disk, rename it over path. The file
    gets the mode a new file gets from the user's umask (0644 under the usual 022), as any other
    file the user writes; a file replaced keeps the permissions it had (a checkpoint made private
    with chmod 600 stays private). Windows has no such modes."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = create_temporary(directory)
    try:
        keep_mode(path, fd)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)                        # atomic: readers see the old file or the new one
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)         # make the rename itself durable
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def create_temporary(directory):
    """(fd, path) of a new temporary file in directory, created with mode 0o666 so that the operating
    system applies the user's umask (tempfile.mkstemp would make it 0600 whatever the umask)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = os.path.join(directory, TEMPORARY_PREFIX + secrets.token_hex(8))
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:                      # (a name drawn twice: draw another)
            continue


def keep_mode(path, fd):
    """Give the new file (open as fd) the permission bits of the file it will replace, if any (POSIX)."""
    if os.name != "posix":
        return
    try:
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return
    os.fchmod(fd, mode)


def remove_temporaries(directory):
    """Delete the temporary files of saves that were killed before their rename."""
    for name in os.listdir(directory):
        if name.startswith(TEMPORARY_PREFIX):
            os.unlink(os.path.join(directory, name))


def load(path):
    """Read a checkpoint written by save(); any problem raises CheckpointError with a one-line reason."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror}") from None
    if not data:
        raise CheckpointError(f"checkpoint {path} is empty")
    try:
        content = _SafeUnpickler(io.BytesIO(data), encoding="latin1").load()   # latin1: Python 2's pickles
    except _Forbidden as e:
        raise CheckpointError(f"refusing to load {path}: {e}") from None
    except Exception:  # noqa: BLE001 (a truncated or foreign file can raise almost any exception)
        raise CheckpointError(f"checkpoint {path} is damaged or not a pong_pg checkpoint") from None
    if isinstance(content, dict) and content.get("format") != FORMAT and ({"W1", "W2"} & set(content)):
        return agent_from_2016(content, path)
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a pong_pg checkpoint")
    if content.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {content.get('version')!r}; "
                              f"this pong_pg reads version {VERSION}")
    try:
        return _decode(content["state"])
    except Exception:  # noqa: BLE001 (bad dtypes, shapes or sizes raise TypeError, ValueError, ...)
        raise CheckpointError(f"checkpoint {path} is damaged: its arrays do not decode") from None


class DirectoryInUse(Exception):
    """Another process holds the directory's lock; .pid is its process id where known."""

    def __init__(self, pid):
        super().__init__(pid)
        self.pid = pid


class DirectoryLock:
    """An OS lock on a directory for as long as this process holds it: flock on the directory itself
    on POSIX, msvcrt.locking on DIR/.lock on Windows. The OS releases it when the process ends,
    however it ends (kill -9, power loss), so nothing stale is left to clean up. A context manager.
    DIR/.lock names the holder's pid, for the message another process gets."""

    def __init__(self, directory):
        """Take the lock, or raise DirectoryInUse. Writes nothing until it holds the lock."""
        self.pid_file = os.path.join(directory, LOCK_FILE)
        self.fd = os.open(directory if fcntl else self.pid_file, os.O_RDONLY if fcntl else os.O_RDWR | os.O_CREAT)
        try:
            if fcntl is not None:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:
                msvcrt.locking(self.fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            os.close(self.fd)
            raise DirectoryInUse(self._holder()) from None

    def _holder(self):
        try:
            with open(self.pid_file) as f:
                text = f.read().strip()
        except OSError:                     # none yet, or Windows: the holder's locked byte is unreadable
            return None
        return int(text) if text.isdigit() else None

    def name_holder(self):
        """Write this process's pid into DIR/.lock (once the run is under way)."""
        if fcntl is not None:
            with open(self.pid_file, "w") as f:
                f.write(str(os.getpid()))

    def release(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
