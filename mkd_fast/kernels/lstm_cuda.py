"""CUDA LSTM inference kernels (``mkd_fast._C_cuda.lstm_forward``, csrc/cuda/lstm_cuda_*).

The call launches on torch's current CUDA stream of the input's device (the stream travels as an int).
"""
import functools

import torch


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Whether the compiled CUDA extension has the LSTM entry point (older builds lack it)."""
    try:
        from .. import _C_cuda
    except ImportError:
        return False
    return hasattr(_C_cuda, "lstm_forward")


PATHS = {"auto": 0, "persistent": 1, "per_step": 2}


def lstm_forward(data, sizes, sorted_indices, packed, batch_first, w_ih, bias, w_hh, hidden, directions, out_dtype,
                 path: str = "auto"):
    """(output, h_n, c_n); arguments as mkd_fast._C.lstm_forward (weights in pack_lstm_cuda's layout).

    path: "auto" (the persistent kernel when the recurrent weights fit on chip, else per-step), or one forced
    (tests; "persistent" raises when it cannot run).
    """
    from .. import _C_cuda

    if path not in PATHS:
        raise ValueError(f"cuda_path: expected one of {sorted(PATHS)}, got {path!r}")
    stream = torch.cuda.current_stream(data.device).cuda_stream
    return _C_cuda.lstm_forward(data, sizes, sorted_indices, packed, batch_first, w_ih, bias, w_hh, int(hidden),
                                int(directions), out_dtype, int(stream), PATHS[path])
