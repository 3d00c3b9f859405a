"""FastBiLSTM: inference-only replacement for a trained ``nn.LSTM`` on padded or packed batches.

``FastBiLSTM.from_lstm(lstm)`` wraps an existing ``nn.LSTM`` (sharing its parameters) and runs it with the
compiled kernels: ``mkd_fast._C`` on CPU tensors (csrc/cpu/lstm_cpu_*.cpp), ``mkd_fast._C_cuda`` on CUDA
tensors (csrc/cuda/lstm_cuda_*). The result is what ``nn.LSTM`` gives on
``pack_padded_sequence(x, lengths, enforce_sorted=False)`` padded back to the input's length: padded
positions of the output are zero, the forward state ends at each sequence's last real token and the
backward direction starts there.

Semantics worth knowing:

- Inference only. When autograd would record the call (grad mode on and a parameter or the input requires
  grad), the call falls back to the wrapped ``nn.LSTM`` on the packed batch (same result, differentiable)
  and warns once per module. Use ``torch.no_grad()`` / ``torch.inference_mode()`` to get the fast path.
- Computation is float32 whatever the input dtype (float32, bfloat16, float16); the output, ``h_n`` and
  ``c_n`` come back in the input's dtype. The weights may be in any float dtype.
- No initial state (``hx``), no ``proj_size``; dropout between layers is never applied (eval semantics).
- The weights are laid out for the kernels once (at construction for a CPU LSTM, else at the first call)
  and cached; the cache is rebuilt when a parameter of the wrapped LSTM changes (in place or replaced), so
  the module stays correct while the LSTM is being trained elsewhere.  Changes are detected through the
  parameters' version counters: writes through ``param.data`` (which bypass them) are not seen; call
  :meth:`refresh` after such a write.
- An empty batch (B = 0) returns an empty output and ``h_n``/``c_n`` of shape [layers * directions, 0, H].
- Devices other than CPU and CUDA, or a missing compiled extension, fall back to ``nn.LSTM`` with a
  one-time warning.
"""
from __future__ import annotations

import warnings
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
LengthsLike = Union[torch.Tensor, Sequence[int], None]


def _stack_directions(lstm: nn.LSTM, layer: int) -> List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(W_ih [4H, in], W_hh [4H, H], b_ih + b_hh [4H]) per direction of one layer, as float32."""
    out = []
    for suffix in ([""] + (["_reverse"] if lstm.bidirectional else [])):
        name = f"l{layer}{suffix}"
        w_ih = getattr(lstm, f"weight_ih_{name}").detach().float()
        w_hh = getattr(lstm, f"weight_hh_{name}").detach().float()
        if lstm.bias:
            b = getattr(lstm, f"bias_ih_{name}").detach().float() + getattr(lstm, f"bias_hh_{name}").detach().float()
        else:
            b = torch.zeros(w_ih.shape[0], dtype=torch.float32, device=w_ih.device)
        out.append((w_ih, w_hh, b))
    return out


def _pad_units(w: torch.Tensor, hidden: int, hidden_pad: int) -> torch.Tensor:
    """[4H, ...] -> [4, Hp, ...], units >= H zero (they then stay zero through the recurrence)."""
    w = w.reshape(4, hidden, *w.shape[1:])
    if hidden_pad == hidden:
        return w
    out = w.new_zeros(4, hidden_pad, *w.shape[2:])
    out[:, :hidden] = w
    return out


def _block_order(hidden: int, block: int) -> torch.Tensor:
    """Row permutation of a [4H, ...] gate-major tensor into blocks of `block` units, gates within a block."""
    order = []
    for start in range(0, hidden, block):
        units = torch.arange(start, min(start + block, hidden))
        order += [g * hidden + units for g in range(4)]
    return torch.cat(order)


def pack_lstm_cpu(lstm: nn.LSTM, block: int):
    """Weights in the CPU kernel's layout (csrc/cpu/lstm_cpu_kernel.h), block = V floats per vector.

    Per layer: w_ih [D*4H, in] and bias [D*4H] with rows grouped per direction and block of V units (gates
    within a block), w_hh [D, nblk, H, 4, V] (units padded to nblk * V with zeros).
    Returns (w_ih list, bias list, w_hh list, Hp).
    """
    H = lstm.hidden_size
    Hp = -(-H // block) * block
    nblk = Hp // block
    order = _block_order(H, block)
    w_ih_l, bias_l, w_hh_l = [], [], []
    for layer in range(lstm.num_layers):
        ih, hh, bb = [], [], []
        for w_ih, w_hh, b in _stack_directions(lstm, layer):
            ih.append(w_ih.index_select(0, order.to(w_ih.device)))
            bb.append(b.index_select(0, order.to(b.device)))
            hh.append(_pad_units(w_hh, H, Hp).reshape(4, nblk, block, H).permute(1, 3, 0, 2))
        w_ih_l.append(torch.cat(ih).contiguous())
        bias_l.append(torch.cat(bb).contiguous())
        w_hh_l.append(torch.stack(hh).contiguous())
    return w_ih_l, bias_l, w_hh_l, Hp


def pack_lstm_cuda(lstm: nn.LSTM):
    """Weights in the CUDA kernels' layout (csrc/cuda/lstm_cuda.h): gates interleaved per unit.

    Per layer: w_ih [D*H*4, in] and bias [D*H*4] with rows ordered (direction, unit, gate);
    w_hh [D, H (input unit k), H (output unit), 4]. Returns (w_ih list, bias list, w_hh list).
    """
    H = lstm.hidden_size
    w_ih_l, bias_l, w_hh_l = [], [], []
    for layer in range(lstm.num_layers):
        ih, hh, bb = [], [], []
        for w_ih, w_hh, b in _stack_directions(lstm, layer):
            ih.append(w_ih.reshape(4, H, -1).transpose(0, 1).reshape(4 * H, -1))
            bb.append(b.reshape(4, H).t().reshape(-1))
            hh.append(w_hh.reshape(4, H, H).permute(2, 1, 0))  # [k, unit, gate]
        w_ih_l.append(torch.cat(ih).contiguous())
        bias_l.append(torch.cat(bb).contiguous())
        w_hh_l.append(torch.stack(hh).contiguous())
    return w_ih_l, bias_l, w_hh_l


class FastBiLSTM(nn.Module):
    """Inference-only (bi)LSTM over padded-with-lengths or packed batches (see the module docstring).

    Build it from a trained LSTM with :meth:`from_lstm`; the LSTM is kept as the submodule ``lstm`` (its
    parameters are shared, not copied). To put one inside a model that already owns that LSTM without
    registering its parameters twice, keep the FastBiLSTM outside the module tree (e.g. a plain attribute
    set with ``object.__setattr__``).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, bidirectional: bool = True, lstm: Optional[nn.LSTM] = None):
        super().__init__()
        if lstm is None:
            lstm = nn.LSTM(input_size, hidden_size, num_layers, bias=bias, batch_first=batch_first,
                           bidirectional=bidirectional)
        _check_lstm(lstm)
        self.lstm = lstm
        self._cache = {}  # device kind -> (fingerprint, packed weights)
        self._table = None  # (embedding weight, its fingerprint, table) for token input
        self._warned = set()
        self.tile_rows = 0  # CPU kernel rows per task (0: automatic); for tuning and tests
        self.chunk_steps = 0  # CPU time steps per projection chunk of a task (0: automatic); for tests
        self.cuda_path = "auto"  # CUDA recurrence: "auto", "persistent" or "per_step"; for tests
        self._pack_now()

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM) -> "FastBiLSTM":
        """Wraps a (trained) ``nn.LSTM``; its parameters are shared, so later updates are picked up."""
        _check_lstm(lstm)
        return cls(lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.bias, lstm.batch_first,
                   lstm.bidirectional, lstm=lstm)

    @property
    def batch_first(self) -> bool:
        return self.lstm.batch_first

    @property
    def num_directions(self) -> int:
        return 2 if self.lstm.bidirectional else 1

    def extra_repr(self) -> str:
        return "backend: cpu (mkd_fast._C) / cuda (mkd_fast._C_cuda), fallback nn.LSTM"

    # ---------------------------------------------------------------------------------------------
    def forward(self, input: Union[torch.Tensor, PackedSequence], lengths: LengthsLike = None):
        """``output, (h_n, c_n)`` like ``nn.LSTM`` on the packed batch.

        input: padded [B, T, E] (batch_first) or [T, B, E] with ``lengths`` (B ints in [1, T], a CPU tensor or
        a list; None: every sequence has length T), or a PackedSequence (then the output is one too).
        With a table from :meth:`precompute_embedding_table`, ``input`` may hold int64 token ids
        ([B, T] / [T, B] padded, or a PackedSequence of ids).
        """
        packed = isinstance(input, PackedSequence)
        data = input.data if packed else input
        if not isinstance(data, torch.Tensor):
            raise TypeError(f"input: expected a tensor or a PackedSequence, got {type(input).__name__}")
        tokens = not data.is_floating_point()
        if tokens:
            return self._forward_tokens(input, lengths)
        if packed:
            if lengths is not None:
                raise ValueError("lengths: must be None when input is a PackedSequence (it carries its lengths)")
            self._check_features(data, 2)
        else:
            self._check_features(data, 3)
            lengths = self._lengths(lengths, data)
        if self._needs_grad(data):
            self._warn_once("grad", "FastBiLSTM is inference-only: grad is enabled and a parameter or the input "
                            "requires grad, so this call runs nn.LSTM instead (wrap inference in "
                            "torch.no_grad() or torch.inference_mode() for the fast kernels)")
            return self._reference(input, lengths)
        if not packed and data.shape[0 if self.batch_first else 1] == 0:
            return self._empty(data)
        backend = self._backend(data.device)
        if backend is None:
            return self._reference(input, lengths)
        return self._run(backend, input, lengths, packed, tokens=False)

    def refresh(self) -> None:
        """Drops the cached kernel weights (and embedding table), e.g. after writing ``param.data`` directly."""
        self._cache.clear()
        if self._table is not None:
            self._table = (self._table[0], None, None)

    def precompute_embedding_table(self, embedding_weight: torch.Tensor) -> torch.Tensor:
        """Folds a frozen embedding into the first layer: table[v] = W_ih @ embedding[v] + biases.

        Afterwards ``forward`` accepts int64 token ids and gathers the first layer's input projection from
        the table instead of running its GEMM (exact: the same products, computed once per vocabulary
        entry). The table is recomputed when the embedding or the LSTM weights change. Returns it (None for
        an embedding on a CUDA device: there ids are embedded and the first layer runs its GEMM as usual).
        """
        if not isinstance(embedding_weight, torch.Tensor) or embedding_weight.dim() != 2:
            raise ValueError("embedding_weight: expected a 2-D tensor [vocab, E]")
        if embedding_weight.shape[1] != self.lstm.input_size:
            raise ValueError(f"embedding_weight: expected {self.lstm.input_size} columns (the LSTM's input_size), "
                             f"got {embedding_weight.shape[1]}")
        self._table = (embedding_weight, None, None)
        return self._table_for()

    # ---------------------------------------------------------------------------------------------
    def _forward_tokens(self, input, lengths):
        packed = isinstance(input, PackedSequence)
        ids = input.data if packed else input
        if self._table is None:
            raise TypeError("input: integer token ids need precompute_embedding_table(embedding_weight) first; "
                            f"otherwise pass float features (got {ids.dtype})")
        emb = self._table[0]
        if ids.device != emb.device:
            raise ValueError(f"input: expected token ids on {emb.device} (the embedding's device), got {ids.device}")
        if packed:
            if lengths is not None:
                raise ValueError("lengths: must be None when input is a PackedSequence (it carries its lengths)")
            if ids.dim() != 1:
                raise ValueError(f"input: expected packed token ids of 1 dimension, got {ids.dim()}")
        else:
            if ids.dim() != 2:
                raise ValueError(f"input: expected token ids [B, T] (batch_first) or [T, B], got shape {tuple(ids.shape)}")
            lengths = self._lengths(lengths, ids)
        backend = self._backend(ids.device)
        if self._needs_grad(emb) or backend is None:
            if self._needs_grad(emb):
                self._warn_once("grad", "FastBiLSTM is inference-only: grad is enabled and a parameter requires "
                                "grad, so this call runs nn.LSTM instead")
            feats = torch.nn.functional.embedding(ids, emb)
            src = PackedSequence(feats, input.batch_sizes, input.sorted_indices, input.unsorted_indices) \
                if packed else feats
            return self._reference(src, lengths)
        if backend != "cpu":
            # The CUDA kernels take features: gather the embeddings, then the usual path.
            feats = torch.nn.functional.embedding(ids, emb)
            src = PackedSequence(feats, input.batch_sizes, input.sorted_indices, input.unsorted_indices) \
                if packed else feats
            return self._run(backend, src, lengths, packed, tokens=False)
        if not packed and ids.shape[0 if self.batch_first else 1] == 0:
            return self._empty(torch.empty(*ids.shape, self.lstm.input_size, dtype=emb.dtype, device=ids.device))
        return self._run("cpu", input, lengths, packed, tokens=True)

    def _run(self, backend, input, lengths, packed, tokens: bool):
        data = input.data if packed else input
        out_dtype = data.dtype if data.is_floating_point() else self._table[0].dtype
        if out_dtype not in _FLOAT_DTYPES:
            out_dtype = torch.float32
        if packed:
            sizes, sorted_idx = input.batch_sizes, input.sorted_indices
        else:
            sizes, sorted_idx = lengths, None
        if backend == "cpu":
            from . import _C

            weights = self._weights("cpu", data.device)
            w_ih, bias, w_hh = weights
            table = self._table_for(weights) if tokens else None
            out, h_n, c_n = _C.lstm_forward(data, sizes, sorted_idx, packed, self.batch_first, w_ih, bias, w_hh,
                                            self.lstm.hidden_size, self.num_directions, table, out_dtype,
                                            int(self.tile_rows), int(self.chunk_steps))
        else:
            from .kernels import lstm_cuda

            w_ih, bias, w_hh = self._weights("cuda", data.device)
            out, h_n, c_n = lstm_cuda.lstm_forward(data, sizes, sorted_idx, packed, self.batch_first, w_ih, bias,
                                                   w_hh, self.lstm.hidden_size, self.num_directions, out_dtype,
                                                   self.cuda_path)
        if packed:
            out = PackedSequence(out, input.batch_sizes, input.sorted_indices, input.unsorted_indices)
        return out, (h_n, c_n)

    def _pack_now(self):
        """Lays the weights out for the kernel of the LSTM's current device at construction (the cache is
        rebuilt later only if a parameter changes); nothing to do where that kernel is unavailable."""
        from .backends import backends

        device = self.lstm._flat_weights[0].device
        if device.type == "cpu" and backends()["cpu"].available:
            self._weights("cpu", device)

    def _weights(self, kind: str, device: torch.device):
        params = tuple(self.lstm._flat_weights)
        if any(p.device != device for p in params):
            raise ValueError(f"input: expected a tensor on {params[0].device} (the LSTM's device), got {device}")
        fingerprint = tuple((p.data_ptr(), _version(p), p.dtype, p.device) for p in params)
        cached = self._cache.get(kind)
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        with torch.no_grad():
            if kind == "cpu":
                from . import _C

                w_ih, bias, w_hh, _ = pack_lstm_cpu(self.lstm, _C.lstm_block_width())
            else:
                w_ih, bias, w_hh = pack_lstm_cuda(self.lstm)
        self._cache[kind] = (fingerprint, (w_ih, bias, w_hh))
        return w_ih, bias, w_hh

    def _table_for(self, weights=None) -> Optional[torch.Tensor]:
        """The table of the current embedding and weights, rebuilt when either changed. `weights`: this call's
        `_weights("cpu", ...)` when the caller already has them (a forward), so they are not looked up twice."""
        emb, old_fp, table = self._table
        if emb.device.type != "cpu":
            return None  # CUDA: the embedding is gathered and the first layer's GEMM runs as usual
        w_ih, bias, _ = weights if weights is not None else self._weights("cpu", emb.device)
        fingerprint = (emb.data_ptr(), _version(emb), self._cache["cpu"][0])  # embedding and LSTM weights
        if table is None or old_fp != fingerprint:
            with torch.no_grad():
                table = torch.addmm(bias[0], emb.detach().float(), w_ih[0].t())
            self._table = (emb, fingerprint, table)
        return table

    # ---------------------------------------------------------------------------------------------
    def _check_features(self, data: torch.Tensor, dims: int):
        if data.dim() != dims:
            shape = "[N, E] (PackedSequence.data)" if dims == 2 else ("[B, T, E] (batch_first)" if self.batch_first
                                                                     else "[T, B, E]")
            raise ValueError(f"input: expected a {dims}-D tensor {shape}, got shape {tuple(data.shape)}")
        if data.shape[-1] != self.lstm.input_size:
            raise ValueError(f"input: expected {self.lstm.input_size} features in the last dimension (the LSTM's "
                             f"input_size), got {data.shape[-1]}")
        if data.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"input: expected float32, bfloat16 or float16, got {data.dtype}")

    def _lengths(self, lengths: LengthsLike, data: torch.Tensor) -> torch.Tensor:
        B, T = (data.shape[0], data.shape[1]) if self.batch_first else (data.shape[1], data.shape[0])
        if T == 0 and B > 0:
            raise ValueError(f"input: expected at least one time step, got shape {tuple(data.shape)} (T = 0)")
        if isinstance(lengths, tuple) and lengths and all(isinstance(v, torch.Tensor) for v in lengths):
            raise TypeError("lengths: got a tuple of tensors; FastBiLSTM takes no initial state (hx): its second "
                            "argument is the sequence lengths [B]")
        if lengths is None:
            return torch.full((B,), T, dtype=torch.int64)
        if not isinstance(lengths, torch.Tensor):
            lengths = torch.as_tensor(list(lengths))
        if lengths.device.type != "cpu":
            raise ValueError(f"lengths: expected a CPU tensor (as pack_padded_sequence), got device {lengths.device}")
        if lengths.dtype.is_floating_point or lengths.dtype == torch.bool or lengths.is_complex():
            raise TypeError(f"lengths: expected an integer tensor, got {lengths.dtype}")
        if lengths.dim() != 1 or lengths.numel() != B:
            raise ValueError(f"lengths: expected a 1-D tensor of {B} entries (the batch size), got shape "
                             f"{tuple(lengths.shape)}")
        if B > 0:
            lo, hi = int(lengths.min()), int(lengths.max())
            if lo < 1 or hi > T:
                raise ValueError(f"lengths: expected values in [1, {T}] (T = the input's time dimension), got "
                                 f"min {lo}, max {hi}")
        return lengths.to(torch.int64)

    def _needs_grad(self, data: torch.Tensor) -> bool:
        if not torch.is_grad_enabled():
            return False
        return data.requires_grad or any(p.requires_grad for p in self.lstm._flat_weights)

    def _backend(self, device: torch.device) -> Optional[str]:
        from .backends import backends

        kind = device.type
        if kind not in ("cpu", "cuda"):
            self._warn_once(kind, f"FastBiLSTM has no kernel for {kind} tensors: running nn.LSTM")
            return None
        status = backends()[kind]
        if not status.available:
            self._warn_once(kind, f"FastBiLSTM: the {kind} kernels are unavailable ({status.reason}): running nn.LSTM")
            return None
        if kind == "cuda":
            from .kernels import lstm_cuda

            if not lstm_cuda.available():
                self._warn_once(kind, "FastBiLSTM: mkd_fast._C_cuda has no LSTM kernels (rebuild): running nn.LSTM")
                return None
        return kind

    def _warn_once(self, key: str, message: str):
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def _empty(self, data: torch.Tensor):
        B = data.shape[0] if self.batch_first else data.shape[1]
        T = data.shape[1] if self.batch_first else data.shape[0]
        H, D = self.lstm.hidden_size, self.num_directions
        shape = (B, T, D * H) if self.batch_first else (T, B, D * H)
        out = data.new_zeros(shape)
        h = data.new_zeros(self.lstm.num_layers * D, B, H)
        return out, (h, h.clone())

    def _reference(self, input, lengths):
        """nn.LSTM on the packed batch (the semantics FastBiLSTM reproduces); also the fallback path."""
        lstm = self.lstm
        dtype = lstm._flat_weights[0].dtype
        if isinstance(input, PackedSequence):
            src = input if input.data.dtype == dtype else PackedSequence(
                input.data.to(dtype), input.batch_sizes, input.sorted_indices, input.unsorted_indices)
            out, (h, c) = lstm(src)
            out_dtype = input.data.dtype
            if out.data.dtype != out_dtype:
                out = PackedSequence(out.data.to(out_dtype), out.batch_sizes, out.sorted_indices,
                                     out.unsorted_indices)
            return out, (h.to(out_dtype), c.to(out_dtype))
        B = input.shape[0] if self.batch_first else input.shape[1]
        T = input.shape[1] if self.batch_first else input.shape[0]
        if B == 0:
            return self._empty(input)
        packed = pack_padded_sequence(input.to(dtype), lengths, batch_first=self.batch_first, enforce_sorted=False)
        out, (h, c) = lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=self.batch_first, total_length=T)
        return out.to(input.dtype), (h.to(input.dtype), c.to(input.dtype))


def _version(t: torch.Tensor) -> int:
    """In-place update counter of a tensor (inference tensors have none: they count as never updated)."""
    return -1 if t.is_inference() else t._version


def _check_lstm(lstm):
    if not isinstance(lstm, nn.LSTM):
        raise TypeError(f"lstm: expected a torch.nn.LSTM, got {type(lstm).__name__}")
    if getattr(lstm, "proj_size", 0):
        raise ValueError(f"lstm: proj_size={lstm.proj_size} is not supported by FastBiLSTM")
