"""Triton (GPU) backend of the fused distillation loss.

Computes, in ONE launch, the per-row loss and (optionally) the per-row gradient with respect to the
student logits, with hand-derived gradients (see csrc/kd_params.h and mkd_fast/reference.py for the
semantics).  Everything is computed in float32 whatever the input dtypes.

Two kernels, chosen by the number of classes C (see `_kd_config`):

* `_kd_tile_kernel` -- the whole row (student and all K teachers) is held in registers: one read of the
  inputs, one write of the gradient.  BLOCK_R rows per program when rows are short (small C), so every
  program still moves a few thousand elements.
* `_kd_loop_kernel` -- one row per program, the class axis is walked in BLOCK_C tiles: a first pass with
  online max / sum-exp (the streaming-softmax trick) gathers the normalisers, a second pass writes the
  gradient (and the loss where it needs the normalisers).  For K == 1 KL / CE / reverse KL the loss
  (and reverse KL's row sum R) is accumulated online in the first pass, so two passes suffice (one
  without gradient).  JSD (any K) and reverse KL with K > 1 need a third pass, because their gradient
  depends on a whole-row sum (S or R) that in turn needs the normalisers.  MSE without a hard term
  needs no statistics pass.

Numerics: log-probabilities are formed as ``x - max - log(sum exp(x - max))`` (never ``log(exp(x))``),
every ``p * log p``-like product is guarded by ``p > 0`` *before* it is taken, and padded (-inf)
classes are safe in every divergence.  Inactive rows (mask False or label == ignore_index) are never
read: the tile kernel replaces them by a uniform row, the loop kernel skips them; both write 0.

Teacher values are u = log(t) for teacher_format == "probs" (else t) everywhere, the MSE target
(mean_k u_k) included, so a zero probability is a skipped (-inf) class for MSE too.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ..spec import KDSpec, resolve_jsd_endpoints

__all__ = ["kd_rows", "scale_rows"]

# ----------------------------------------------------------------------------------------------------
# Tuning knobs (module level so that tests can shrink them to exercise the looping path cheaply).
# ----------------------------------------------------------------------------------------------------
#: The single-tile path is used while (KP + 1) * next_pow2(C) <= MAX_SINGLE_TILE elements
#: (student + KP teacher rows; KP = next power of two >= K).  8192 elements over 16 warps is 16
#: input elements per thread in all (about 60-110 registers for sm_90, no spilling).
MAX_SINGLE_TILE = 8192
#: Elements (student + KP teacher rows) per iteration of the looping (large-C) path.
LOOP_TILE = 8192
#: Elements a program of the single-tile path should at least handle (several rows when C is small).
ROWS_TARGET = 4096
#: Elements per thread the warp count is chosen for.
ELEMS_PER_THREAD = 16
MAX_WARPS = 16

# Divergence / format codes (the same as mkd_fast.spec and csrc/kd_params.h).
_KL = 0
_RKL = 1
_JSD = 2
_CE = 3
_MSE = 4

NEG_INF = tl.constexpr(float("-inf"))
POS_INF = tl.constexpr(float("inf"))
NAN = tl.constexpr(float("nan"))


# ----------------------------------------------------------------------------------------------------
# Shared device helpers
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _load_teacher(ptrs, msk, PROBS: tl.constexpr):
    """Teacher values u in float32: log(t) for probabilities, else t.  Masked entries are -inf."""
    if PROBS:
        u = tl.log(tl.load(ptrs, mask=msk, other=0.0).to(tl.float32))
    else:
        u = tl.load(ptrs, mask=msk, other=NEG_INF).to(tl.float32)
    return u


@triton.jit
def _mix_teachers(lq, q, log_k, inv_k, K: tl.constexpr, EXACT_LOG: tl.constexpr):
    """Ensemble over axis 0 (the teacher axis): p_t = mean_k q_k and log p_t.

    ``lq``/``q``: per-teacher log-probabilities / probabilities, padded teachers hold -inf / 0.
    With EXACT_LOG, log p_t is a logsumexp over the teachers (exact even where p_t underflows; needed
    where log p_t is weighted by p_s); otherwise log(p_t), only used where p_t > 0.
    """
    if K == 1:
        log_pt = tl.max(lq, axis=0)
        pt = tl.sum(q, axis=0)
    else:
        pt = tl.sum(q, axis=0) * inv_k
        if EXACT_LOG:
            mx = tl.max(lq, axis=0)
            mx = tl.where(mx == NEG_INF, 0.0, mx)
            ssum = tl.sum(tl.exp(lq - tl.expand_dims(mx, 0)), axis=0)
            log_pt = mx + tl.log(ssum) - log_k
        else:
            log_pt = tl.log(pt)
    return log_pt, pt


@triton.jit
def _soft_elem(log_ps, ps, log_pt, pt, beta, log_beta, log_1mbeta, DIV: tl.constexpr):
    """Element-wise soft-loss pieces.

    Returns (loss_e, sum_e, d):
      loss_e  -- the element's contribution to the soft loss (before any scale),
      sum_e   -- the element's contribution to the row sum the gradient needs (R for reverse KL,
                 S for JSD; unused otherwise),
      d       -- KL / CE: the gradient (p_s - p_t); reverse KL: log p_s - log p_t; JSD: log p_s - log M.
    """
    if DIV == 0:  # kl
        on_t = (pt != 0.0) & (log_pt != NEG_INF)
        loss_e = tl.where(on_t, pt * (log_pt - log_ps), 0.0)
        sum_e = loss_e
        d = ps - pt
    elif DIV == 3:  # ce
        loss_e = tl.where(pt != 0.0, -pt * log_ps, 0.0)
        sum_e = loss_e
        d = ps - pt
    elif DIV == 1:  # reverse kl
        d = log_ps - log_pt
        loss_e = tl.where(ps != 0.0, ps * d, 0.0)
        sum_e = loss_e
    else:  # jsd: log M = logaddexp(log beta + log p_t, log(1 - beta) + log p_s)
        x = log_beta + log_pt
        y = log_1mbeta + log_ps
        mx = tl.maximum(x, y)
        mn = tl.minimum(x, y)
        mxs = tl.where(mx == NEG_INF, 0.0, mx)
        log_m = tl.where(mx == NEG_INF, NEG_INF, mxs + tl.log(1.0 + tl.exp(mn - mxs)))
        log_m = tl.where((x != x) | (y != y), x + y, log_m)  # maximum/minimum drop NaN: put it back
        d = log_ps - log_m
        sum_e = tl.where(ps != 0.0, ps * d, 0.0)
        on_t = (pt != 0.0) & (log_pt != NEG_INF)
        loss_e = beta * tl.where(on_t, pt * (log_pt - log_m), 0.0) + (1.0 - beta) * sum_e
    return loss_e, sum_e, d


@triton.jit
def _soft_grad(ps, d, row_sum, beta, DIV: tl.constexpr):
    """d soft / d a (a = s / T), from `_soft_elem`'s d and the row sum (R or S)."""
    if DIV == 1:
        g = tl.where(ps != 0.0, ps * (d - row_sum), 0.0)
    elif DIV == 2:
        g = (1.0 - beta) * tl.where(ps != 0.0, ps * (d - row_sum), 0.0)
    else:
        g = d
    return g


@triton.jit
def _rescale(w, f):
    """w * f for an online accumulator; an infinite w stays infinite when f underflows to 0."""
    return tl.where((f == 0.0) & ((w == POS_INF) | (w == NEG_INF)), w, w * f)


# ----------------------------------------------------------------------------------------------------
# Single-tile kernel: BLOCK_R whole rows per program, held in registers
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _kd_tile_kernel(
    s_ptr, t_ptr, lab_ptr, msk_ptr, w_ptr, loss_ptr, g_ptr,
    N, C, s_stride, t_stride_k, t_stride_n, g_stride, w_stride,
    inv_t, alpha, soft_coef, grad_coef, beta, log_beta, log_1mbeta, log_k, inv_k, inv_c,
    loss_scale, ignore_index,
    K: tl.constexpr, KP: tl.constexpr, DIV: tl.constexpr, PROBS: tl.constexpr,
    HARD: tl.constexpr, SOFT: tl.constexpr, HAS_MASK: tl.constexpr, HAS_LABELS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    cols = tl.arange(0, BLOCK_C)
    row_in = rows < N
    col_in = cols < C
    active = row_in
    if HAS_MASK:
        mk = tl.load(msk_ptr + rows, mask=row_in, other=0)
        active = active & (mk != 0)
    if HAS_LABELS:
        lab = tl.load(lab_ptr + rows, mask=row_in, other=0).to(tl.int64)
        active = active & (lab != ignore_index)
    weight = tl.zeros([BLOCK_R], dtype=tl.float32) + loss_scale
    if HAS_WEIGHT:
        weight *= tl.load(w_ptr + rows * w_stride, mask=row_in, other=0.0).to(tl.float32)
    active = active & (weight != 0.0)  # a zero weight makes the row inactive (nothing can leak)
    ld = active[:, None] & col_in[None, :]
    # Inactive rows are not read: they become a uniform row (all zeros), padded classes -inf.
    s = tl.load(s_ptr + rows[:, None] * s_stride + cols[None, :], mask=ld, other=0.0).to(tl.float32)
    s = tl.where(col_in[None, :], s, NEG_INF)

    loss = tl.zeros([BLOCK_R], dtype=tl.float32)
    if COMPUTE_GRAD:
        g = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)

    if HARD:  # cross-entropy with the labels at T = 1
        m1 = tl.max(s, axis=1)
        e1 = tl.exp(s - m1[:, None])
        z1 = tl.sum(e1, axis=1)
        lab_ok = (lab >= 0) & (lab < C)
        hit = cols[None, :] == lab[:, None]
        s_y = tl.sum(tl.where(hit, s, 0.0), axis=1)
        hard = tl.where(lab_ok, m1 + tl.log(z1) - s_y, NAN)
        loss += alpha * hard
        if COMPUTE_GRAD:
            g += alpha * (e1 * (1.0 / z1)[:, None] - tl.where(hit, 1.0, 0.0))
            g = tl.where(lab_ok[:, None], g, NAN)

    if SOFT:
        kk = tl.arange(0, KP)
        k_in = kk < K
        t_off = (kk[:, None, None].to(tl.int64) * t_stride_k + rows[None, :, None] * t_stride_n
                 + cols[None, None, :])
        ld3 = k_in[:, None, None] & ld[None, :, :]
        u = _load_teacher(t_ptr + t_off, ld3, PROBS)
        valid3 = k_in[:, None, None] & col_in[None, None, :]
        u = tl.where(ld3, u, tl.where(valid3, 0.0, NEG_INF))  # inactive rows -> uniform (0)
        if DIV == 4:  # mse against the mean of the raw teacher values
            tgt = tl.sum(tl.where(k_in[:, None, None], u, 0.0), axis=0) * inv_k
            valid = tgt != NEG_INF  # padded class skipped; NaN and +inf propagate
            diff = s - tgt
            loss += soft_coef * (tl.sum(tl.where(valid, diff * diff, 0.0), axis=1) * inv_c)
            if COMPUTE_GRAD:
                g += grad_coef * tl.where(valid, 2.0 * inv_c * diff, 0.0)
        else:
            # student log p_s; shifted by the max in raw units so that (s - max) / T is exact-ish
            m_s = tl.max(s, axis=1)
            a_sh = (s - m_s[:, None]) * inv_t
            e_s = tl.exp(a_sh)
            z_s = tl.sum(e_s, axis=1)
            log_ps = a_sh - tl.log(z_s)[:, None]
            ps = e_s * (1.0 / z_s)[:, None]
            # teachers log q_k (padded teachers: m = 0, z = 1 -> lq = -inf, q = 0)
            m_t = tl.max(u, axis=2)
            m_t = tl.where(m_t == NEG_INF, 0.0, m_t)
            b_sh = (u - m_t[:, :, None]) * inv_t
            e_t = tl.exp(b_sh)
            z_t = tl.sum(e_t, axis=2)
            z_t = tl.where(k_in[:, None], z_t, 1.0)
            lq = b_sh - tl.log(z_t)[:, :, None]
            q = e_t * (1.0 / z_t)[:, :, None]
            log_pt, pt = _mix_teachers(lq, q, log_k, inv_k, K, (DIV == 1) or (DIV == 2))
            loss_e, sum_e, d = _soft_elem(log_ps, ps, log_pt, pt, beta, log_beta, log_1mbeta, DIV)
            soft = tl.sum(loss_e, axis=1)
            loss += soft_coef * soft
            if COMPUTE_GRAD:
                row_sum = tl.sum(sum_e, axis=1)
                g += grad_coef * _soft_grad(ps, d, row_sum[:, None], beta, DIV)

    loss = tl.where(active, loss * weight, 0.0)
    tl.store(loss_ptr + rows, loss, mask=row_in)
    if COMPUTE_GRAD:
        g = tl.where(active[:, None], g * weight[:, None], 0.0)
        tl.store(g_ptr + rows[:, None] * g_stride + cols[None, :],
                 g.to(g_ptr.dtype.element_ty), mask=row_in[:, None] & col_in[None, :])


# ----------------------------------------------------------------------------------------------------
# Looping kernel: one row per program, the class axis walked in BLOCK_C tiles
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _kd_loop_kernel(
    s_ptr, t_ptr, lab_ptr, msk_ptr, w_ptr, loss_ptr, g_ptr,
    N, C, s_stride, t_stride_k, t_stride_n, g_stride, w_stride,
    inv_t, alpha, soft_coef, grad_coef, beta, log_beta, log_1mbeta, log_k, inv_k, inv_c,
    loss_scale, ignore_index,
    K: tl.constexpr, KP: tl.constexpr, DIV: tl.constexpr, PROBS: tl.constexpr,
    HARD: tl.constexpr, SOFT: tl.constexpr, HAS_MASK: tl.constexpr, HAS_LABELS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr, ONLINE: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # Which passes run (all compile-time):
    SOFTMAX: tl.constexpr = SOFT and (DIV != 4)          # soft term needs the softmax normalisers
    NEED_STATS: tl.constexpr = HARD or SOFTMAX           # pass 1
    # (boolean operators kept binary: older Triton front ends reject `a and b and c`)
    TWO_SUM: tl.constexpr = SOFTMAX and ((not ONLINE) and ((DIV == 1) or (DIV == 2)))
    # pass 2 computes the loss (when not online) and, unless TWO_SUM, the gradient
    PASS2: tl.constexpr = (SOFT and not ONLINE) or (COMPUTE_GRAD and not TWO_SUM)
    PASS3: tl.constexpr = COMPUTE_GRAD and TWO_SUM
    EXACT_LOG: tl.constexpr = (DIV == 1) or (DIV == 2)

    row = tl.program_id(0).to(tl.int64)
    s_row = s_ptr + row * s_stride
    t_row = t_ptr + row * t_stride_n
    g_row = g_ptr + row * g_stride
    offs = tl.arange(0, BLOCK_C)
    kk = tl.arange(0, KP)
    k_in = kk < K
    k_off = kk.to(tl.int64) * t_stride_k

    active = row < N
    if HAS_MASK:
        active = active & (tl.load(msk_ptr + row) != 0)
    if HAS_LABELS:
        lab = tl.load(lab_ptr + row).to(tl.int64)
        active = active & (lab != ignore_index)
    weight = tl.full([], 1.0, tl.float32) * loss_scale
    if HAS_WEIGHT:
        weight *= tl.load(w_ptr + row * w_stride).to(tl.float32)
    active = active & (weight != 0.0)  # a zero weight makes the row inactive (nothing can leak)

    if active:
        # ---------------- pass 1: online max / sum-exp (and online loss when ONLINE) -------------
        m_s = tl.full([], NEG_INF, tl.float32)
        z_s = tl.full([], 0.0, tl.float32)
        m_1 = tl.full([], NEG_INF, tl.float32)
        z_1 = tl.full([], 0.0, tl.float32)
        m_t = tl.full([KP], NEG_INF, tl.float32)
        z_t = tl.full([KP], 0.0, tl.float32)
        w = tl.full([], 0.0, tl.float32)
        if NEED_STATS:
            for start in range(0, C, BLOCK_C):
                cols = start + offs
                cm = cols < C
                x = tl.load(s_row + cols, mask=cm, other=NEG_INF).to(tl.float32)
                if HARD:
                    mn1 = tl.maximum(m_1, tl.max(x, axis=0))
                    mn1s = tl.where(mn1 == NEG_INF, 0.0, mn1)
                    z_1 = z_1 * tl.exp(m_1 - mn1s) + tl.sum(tl.exp(x - mn1s), axis=0)
                    m_1 = mn1
                if SOFTMAX:  # maxima tracked in raw units: (x - max) / T is exact-ish
                    mn = tl.maximum(m_s, tl.max(x, axis=0))
                    mns = tl.where(mn == NEG_INF, 0.0, mn)
                    f_s = tl.exp((m_s - mns) * inv_t)
                    e_s = tl.exp((x - mns) * inv_t)
                    z_s = z_s * f_s + tl.sum(e_s, axis=0)
                    m_s = mn
                    u = _load_teacher(t_row + k_off[:, None] + cols[None, :],
                                      k_in[:, None] & cm[None, :], PROBS)
                    mnt = tl.maximum(m_t, tl.max(u, axis=1))
                    mnts = tl.where(mnt == NEG_INF, 0.0, mnt)
                    f_t = tl.exp((m_t - mnts) * inv_t)
                    e_t = tl.exp((u - mnts[:, None]) * inv_t)
                    z_t = z_t * f_t + tl.sum(e_t, axis=1)
                    m_t = mnt
                    if ONLINE:  # K == 1: accumulate the loss's weighted sum with rescaling
                        u1 = tl.max(u, axis=0)
                        if DIV == 1:  # sum e_s (a - b)
                            w = _rescale(w, f_s) + tl.sum(
                                tl.where(e_s != 0.0, e_s * ((x - u1) * inv_t), 0.0), axis=0)
                        else:
                            e_t1 = tl.sum(e_t, axis=0)
                            f_t1 = tl.sum(f_t, axis=0)
                            if DIV == 0:  # sum e_t (b - a)
                                w = _rescale(w, f_t1) + tl.sum(
                                    tl.where(e_t1 != 0.0, e_t1 * ((u1 - x) * inv_t), 0.0), axis=0)
                            else:  # ce: sum e_t a
                                w = _rescale(w, f_t1) + tl.sum(
                                    tl.where(e_t1 != 0.0, e_t1 * (x * inv_t), 0.0), axis=0)

        # normalisers: log p_s = (x - m_s) / T - log z_s, log q_k = (u_k - m_k) / T - log z_k
        log_zs = tl.log(z_s)
        m_t = tl.where(k_in, m_t, 0.0)
        log_zt = tl.where(k_in, tl.log(z_t), 0.0)  # padded teachers: u = -inf -> lq = -inf
        lse_1 = m_1 + tl.log(z_1)

        loss = tl.full([], 0.0, tl.float32)
        if HARD:
            lab_ok = (lab >= 0) & (lab < C)
            s_y = tl.load(s_row + tl.where(lab_ok, lab, 0), mask=lab_ok, other=0.0).to(tl.float32)
            loss += alpha * tl.where(lab_ok, lse_1 - s_y, NAN)
        row_sum = tl.full([], 0.0, tl.float32)
        if ONLINE:  # K == 1
            m_t1 = tl.sum(m_t, axis=0)
            z_t1 = tl.sum(z_t, axis=0)
            if DIV == 1:  # R = E_ps[a - b] - lse_s + lse_t
                row_sum = w / z_s + (m_t1 - m_s) * inv_t + tl.log(z_t1 / z_s)
                soft = row_sum
            elif DIV == 0:  # KL = E_pt[b - a] - lse_t + lse_s
                soft = w / z_t1 + (m_s - m_t1) * inv_t + tl.log(z_s / z_t1)
            else:  # CE = lse_s - E_pt[a]
                soft = m_s * inv_t + log_zs - w / z_t1
            loss += soft_coef * soft

        # ---------------- pass 2: loss (when not online) and gradient ----------------------------
        if PASS2:
            acc = tl.zeros([BLOCK_C], dtype=tl.float32)
            for start in range(0, C, BLOCK_C):
                cols = start + offs
                cm = cols < C
                x = tl.load(s_row + cols, mask=cm, other=NEG_INF).to(tl.float32)
                if COMPUTE_GRAD:
                    g = tl.zeros([BLOCK_C], dtype=tl.float32)
                    if HARD:
                        onehot = tl.where(cols == lab, 1.0, 0.0)
                        g += alpha * (tl.exp(x - lse_1) - onehot)
                if SOFT:
                    u = _load_teacher(t_row + k_off[:, None] + cols[None, :],
                                      k_in[:, None] & cm[None, :], PROBS)
                    if DIV == 4:
                        tgt = tl.sum(tl.where(k_in[:, None], u, 0.0), axis=0) * inv_k
                        valid = tgt != NEG_INF  # padded class skipped; NaN and +inf propagate
                        diff = x - tgt
                        acc += tl.where(valid, diff * diff, 0.0)
                        if COMPUTE_GRAD:
                            g += grad_coef * tl.where(valid, 2.0 * inv_c * diff, 0.0)
                    else:
                        log_ps = (x - m_s) * inv_t - log_zs
                        ps = tl.exp(log_ps)
                        lq = (u - m_t[:, None]) * inv_t - log_zt[:, None]
                        log_pt, pt = _mix_teachers(lq, tl.exp(lq), log_k, inv_k, K, EXACT_LOG)
                        loss_e, sum_e, d = _soft_elem(log_ps, ps, log_pt, pt, beta, log_beta,
                                                      log_1mbeta, DIV)
                        if not ONLINE:
                            if TWO_SUM:
                                acc += loss_e
                                row_sum += tl.sum(sum_e, axis=0)
                            else:
                                acc += loss_e
                        if COMPUTE_GRAD:
                            if not TWO_SUM:
                                g += grad_coef * _soft_grad(ps, d, row_sum, beta, DIV)
                if COMPUTE_GRAD:
                    if not TWO_SUM:
                        if HARD:
                            g = tl.where(lab_ok, g, NAN)
                        g = g * weight
                        tl.store(g_row + cols, g.to(g_ptr.dtype.element_ty), mask=cm)
            if SOFT and not ONLINE:
                if DIV == 4:
                    loss += soft_coef * (tl.sum(acc, axis=0) * inv_c)
                else:
                    loss += soft_coef * tl.sum(acc, axis=0)

        # ---------------- pass 3: gradient of reverse KL / JSD (needs the row sum) ----------------
        if PASS3:
            for start in range(0, C, BLOCK_C):
                cols = start + offs
                cm = cols < C
                x = tl.load(s_row + cols, mask=cm, other=NEG_INF).to(tl.float32)
                g = tl.zeros([BLOCK_C], dtype=tl.float32)
                if HARD:
                    onehot = tl.where(cols == lab, 1.0, 0.0)
                    g += alpha * (tl.exp(x - lse_1) - onehot)
                u = _load_teacher(t_row + k_off[:, None] + cols[None, :],
                                  k_in[:, None] & cm[None, :], PROBS)
                log_ps = (x - m_s) * inv_t - log_zs
                ps = tl.exp(log_ps)
                lq = (u - m_t[:, None]) * inv_t - log_zt[:, None]
                log_pt, pt = _mix_teachers(lq, tl.exp(lq), log_k, inv_k, K, EXACT_LOG)
                loss_e, sum_e, d = _soft_elem(log_ps, ps, log_pt, pt, beta, log_beta, log_1mbeta, DIV)
                g += grad_coef * _soft_grad(ps, d, row_sum, beta, DIV)
                if HARD:
                    g = tl.where(lab_ok, g, NAN)
                g = g * weight
                tl.store(g_row + cols, g.to(g_ptr.dtype.element_ty), mask=cm)

        tl.store(loss_ptr + row, loss * weight)
    else:
        tl.store(loss_ptr + row, 0.0)
        if COMPUTE_GRAD:
            zero = tl.zeros([BLOCK_C], dtype=tl.float32).to(g_ptr.dtype.element_ty)
            for start in range(0, C, BLOCK_C):
                cols = start + offs
                tl.store(g_row + cols, zero, mask=cols < C)


# ----------------------------------------------------------------------------------------------------
# scale_rows: out[r, c] = grad[r, c] * row_scale[r]
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _scale_rows_kernel(g_ptr, sc_ptr, o_ptr, N, C, g_stride, sc_stride, o_stride,
                       BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_in = rows < N
    m = row_in[:, None] & (cols < C)[None, :]
    sc = tl.load(sc_ptr + rows * sc_stride, mask=row_in, other=0.0).to(tl.float32)
    gv = tl.load(g_ptr + rows[:, None] * g_stride + cols[None, :], mask=m, other=0.0).to(tl.float32)
    out = gv * sc[:, None]
    tl.store(o_ptr + rows[:, None] * o_stride + cols[None, :], out.to(o_ptr.dtype.element_ty), mask=m)


# ----------------------------------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------------------------------
def _next_pow2(x: int) -> int:
    return 1 if x <= 1 else 1 << (int(x) - 1).bit_length()


def _floor_pow2(x: int) -> int:
    return 1 if x <= 1 else 1 << (int(x).bit_length() - 1)


def _warps_for(elems: int) -> int:
    return max(1, min(MAX_WARPS, _floor_pow2(elems // (32 * ELEMS_PER_THREAD))))


def _kd_config(n_rows: int, n_classes: int, n_teachers: int) -> dict:
    """Launch configuration chosen by C (and K): deterministic, no autotuning.

    Returns {"path": "tile"|"loop", "BLOCK_R", "BLOCK_C", "num_warps"}.
    """
    kp = _next_pow2(n_teachers)
    block_c = _next_pow2(n_classes)
    per_row = (kp + 1) * block_c
    if per_row <= MAX_SINGLE_TILE:
        block_r = 1
        if per_row < ROWS_TARGET:
            block_r = min(_floor_pow2(ROWS_TARGET // per_row), _next_pow2(n_rows))
        return {"path": "tile", "BLOCK_R": block_r, "BLOCK_C": block_c,
                "num_warps": _warps_for(block_r * per_row)}
    block_c = min(block_c, max(1, _floor_pow2(LOOP_TILE // (kp + 1))))
    return {"path": "loop", "BLOCK_R": 1, "BLOCK_C": block_c,
            "num_warps": _warps_for((kp + 1) * block_c)}


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def kd_rows(student: torch.Tensor, teacher: torch.Tensor, labels: Optional[torch.Tensor],
            mask: Optional[torch.Tensor], spec: KDSpec, compute_grad: bool, *,
            row_weight: Optional[torch.Tensor] = None, loss_scale: float = 1.0,
            grad_out: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-row loss (float32 [N]) and, if compute_grad, d loss_rows[r] / d student[r, :] ([N, C],
    contiguous, the student's dtype; else an empty tensor).  See the module docstring.

    Optional weighting (the kernel-module interface of mkd_fast.ops, as in csrc/kd_params.h): loss and
    gradient of row r are multiplied by ``loss_scale * row_weight[r]``; a row whose weight is 0 is
    treated as inactive (0 loss, 0 gradient, whatever it holds).

    ``grad_out`` (e.g. the student itself): write the gradient there.  Safe in place because every
    kernel reads a tile of the student before it writes the gradient of that tile, and writes only in
    its last pass.
    """
    if student.dim() != 2 or teacher.dim() != 3 or tuple(teacher.shape[1:]) != tuple(student.shape):
        raise ValueError(f"kd_rows: student [N, C] and teacher [K, N, C] expected, got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}")
    n_rows, n_classes = student.shape
    n_teachers = teacher.shape[0]
    device = student.device
    loss = torch.empty(n_rows, dtype=torch.float32, device=device)
    if not compute_grad:
        grad = student.new_empty(0)
    elif grad_out is not None:
        if grad_out.shape != student.shape or grad_out.dtype != student.dtype or (
                n_classes > 1 and grad_out.stride(-1) != 1):
            raise ValueError("grad_out: expected the shape and dtype of the student, class stride 1")
        grad = grad_out
    else:
        grad = torch.empty((n_rows, n_classes), dtype=student.dtype, device=device)
    if n_rows == 0:
        return loss, grad

    divergence = resolve_jsd_endpoints(spec.divergence, spec.beta)
    div = {"kl": _KL, "reverse_kl": _RKL, "jsd": _JSD, "ce": _CE, "mse": _MSE}[divergence]
    has_labels = labels is not None
    hard = spec.alpha > 0.0 and has_labels
    soft = spec.alpha < 1.0
    if n_classes == 0 or n_teachers == 0 or not (hard or soft):
        loss.zero_()
        if compute_grad:
            grad.zero_()
        return loss, grad

    student = _last_dim_contiguous(student)
    teacher = _last_dim_contiguous(teacher)
    if has_labels:
        labels = labels.contiguous()
    has_mask = mask is not None
    if has_mask:
        mask = mask.contiguous()
        if mask.dtype == torch.bool:
            mask = mask.view(torch.uint8)
    has_weight = row_weight is not None
    if has_weight:
        if row_weight.dim() == 0:
            row_weight = row_weight.expand(n_rows)
        if row_weight.dim() != 1 or row_weight.shape[0] != n_rows:
            raise ValueError(f"kd_rows: row_weight [{n_rows}] expected, got {tuple(row_weight.shape)}")

    temperature = float(spec.temperature)
    alpha = float(spec.alpha)
    soft_scale = float(spec.soft_scale)
    soft_coef = (1.0 - alpha) * soft_scale
    grad_coef = soft_coef if div == _MSE else soft_coef / temperature
    beta = float(spec.beta)
    log_beta = math.log(beta) if 0.0 < beta else float("-inf")
    log_1mbeta = math.log(1.0 - beta) if beta < 1.0 else float("-inf")

    cfg = _kd_config(n_rows, n_classes, n_teachers)
    kp = _next_pow2(n_teachers)
    args = (
        student, teacher, labels if has_labels else student, mask if has_mask else student,
        row_weight if has_weight else student, loss, grad if compute_grad else loss,
        n_rows, n_classes, student.stride(0), teacher.stride(0), teacher.stride(1),
        grad.stride(0) if compute_grad and n_rows > 1 else n_classes, row_weight.stride(0) if has_weight else 0,
        1.0 / temperature, alpha, soft_coef, grad_coef, beta, log_beta, log_1mbeta,
        math.log(n_teachers), 1.0 / n_teachers, 1.0 / n_classes,
        float(loss_scale), int(spec.ignore_index),
    )
    meta = dict(K=n_teachers, KP=kp, DIV=div, PROBS=spec.teacher_format == "probs",
                HARD=hard, SOFT=soft, HAS_MASK=has_mask, HAS_LABELS=has_labels, HAS_WEIGHT=has_weight,
                COMPUTE_GRAD=bool(compute_grad), BLOCK_C=cfg["BLOCK_C"], num_warps=cfg["num_warps"])
    if cfg["path"] == "tile":
        grid = (triton.cdiv(n_rows, cfg["BLOCK_R"]),)
        _kd_tile_kernel[grid](*args, BLOCK_R=cfg["BLOCK_R"], **meta)
    else:
        online = soft and n_teachers == 1 and div in (_KL, _RKL, _CE)
        _kd_loop_kernel[(n_rows,)](*args, ONLINE=online, **meta)
    return loss, grad


def scale_rows(grad: torch.Tensor, row_scale: torch.Tensor,
               out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """out[r, c] = grad[r, c] * row_scale[r], in float32, stored in grad's dtype.

    ``out`` may be ``grad`` itself (in place).  ``row_scale`` may be a 0-d tensor or have any stride
    (e.g. the expanded grad_output of a sum).
    """
    if grad.dim() != 2:
        raise ValueError(f"scale_rows: grad [N, C] expected, got {tuple(grad.shape)}")
    n_rows, n_classes = grad.shape
    if row_scale.dim() == 0:
        row_scale = row_scale.expand(n_rows)
    if row_scale.dim() != 1 or row_scale.shape[0] != n_rows:
        raise ValueError(f"scale_rows: row_scale [{n_rows}] expected, got {tuple(row_scale.shape)}")
    if out is None:
        out = torch.empty((n_rows, n_classes), dtype=grad.dtype, device=grad.device)
    elif tuple(out.shape) != (n_rows, n_classes):
        raise ValueError(f"scale_rows: out {tuple(out.shape)} does not match grad {tuple(grad.shape)}")
    if grad.numel() == 0:
        return out
    src = _last_dim_contiguous(grad)
    dst = out if out.stride(-1) == 1 else torch.empty((n_rows, n_classes), dtype=out.dtype,
                                                      device=out.device)
    block_c = min(_next_pow2(n_classes), 4096)
    block_r = max(1, min(4096 // block_c, _next_pow2(n_rows)))
    grid = (triton.cdiv(n_rows, block_r), triton.cdiv(n_classes, block_c))
    _scale_rows_kernel[grid](src, row_scale, dst, n_rows, n_classes, src.stride(0),
                             row_scale.stride(0), dst.stride(0), BLOCK_R=block_r, BLOCK_C=block_c,
                             num_warps=_warps_for(block_r * block_c // 2))
    if dst is not out:
        out.copy_(dst)
    return out
