"""The tensor math of Attention Matching, batched over all (layer, KV head) pairs. Imports nothing from `briefing`.

Notation per (layer l, KV head h): Q [m, d] the guidance queries (the query heads of h stacked: m = group size x
query tokens), K, V [T, d] the keys and values of the block being compacted, idx the t kept positions,
s the attention scale (1/sqrt(d) unless the model says otherwise), b [T] a stored bias (a folded cache's beta, else
0). Shapes below carry a leading [L, H] (layers in a chunk, KV heads).

  logits = s Q K^T + b                    [m, T]
  E      = exp(logits - rowmax)           [m, T]
  z      = E 1                            [m]     attention mass of the whole block
  Y      = E V / z                        [m, d]  block output
  A      = E[:, idx]                      [m, t]
  w      = argmin_{lo <= w <= hi} ||A w - z||      (beta = log w; box-constrained NNLS, FISTA)
  X      = A diag(w) / (A w)              [m, t]  softmax(s Q C1^T + b[idx] + beta)
  C2     = V[idx] + X^T (X X^T + lam I)^-1 (Y - X V[idx])   (dual ridge, pulled toward the original values)

Precision: everything here runs in float32 whatever the cache's dtype (bf16 on a GPU). A bf16 mantissa holds 8
bits: exp() of logits, sums over thousands of keys, the NNLS gradient steps and the m x m solve all lose the
differences the fit is made of, and the dual solve can turn singular. Values come back in the cache's dtype; beta
stays float32 (the biased attention casts it to the logits' dtype).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

LAYER_CHUNK = 3  # layers per batched block: bounds the [L, H, m, T] logits in memory
PAD = -1  # a padded slot of a row that keeps fewer positions than the longest (a global allocation)
# beta of a padded slot: its key and value are zero, so its logit is MASKED_BETA and exp() underflows to exactly 0 in
# every float dtype (finite, unlike -inf: a fused kernel's tile of only masked keys stays NaN-free; |beta / scale|
# stays within float16's range)
MASKED_BETA = -1000.0
SOLVE_DTYPE = torch.float32
SOLVE_ELEMENTS = 1 << 25  # elements of the largest tensor of one batched solve (128 MB of float32)
# a ragged problem's layer chunks join one batched solve while the widest is at most this x the narrowest (+ 32)
WIDTH_SLACK = 1.25


def stack_layers(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Per-layer [1, H, n, d] -> [L, H, n, d]."""
    return torch.cat(tensors, dim=0)


def group_queries(queries: dict[int, torch.Tensor], layers: list[int], kv_heads: int) -> torch.Tensor:
    """Per-layer [1, heads, n, d] of `layers` -> [L, kv_heads, group * n, d]: the query heads of each KV head
    stacked."""
    q = torch.cat([queries[i] for i in layers], dim=0)                           # [L, heads, n, d]
    L, heads, n, d = q.shape
    return q.reshape(L, kv_heads, (heads // kv_heads) * n, d)                    # [L, H, g * n, d]


def gather_positions(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t [L, H, T, d], idx [L, H, k] -> [L, H, k, d]; zeros at PAD slots."""
    if not padded(idx):
        return t.gather(2, idx.unsqueeze(-1).expand(-1, -1, -1, t.shape[-1]))
    out = t.gather(2, idx.clamp_min(0).unsqueeze(-1).expand(-1, -1, -1, t.shape[-1]))
    return out.masked_fill((idx < 0).unsqueeze(-1), 0)


def padded(idx: torch.Tensor) -> bool:
    """Whether kept positions [L, H, t] have padded (masked) slots: rows that keep different counts."""
    return bool((idx < 0).any()) if idx.numel() else False


def mask_beta(beta: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor | None:
    """beta [L, H, t] (None: zeros where idx has padding) with MASKED_BETA at the PAD slots of idx [L, H, t]."""
    if not padded(idx):
        return beta
    beta = torch.zeros(idx.shape, dtype=torch.float32, device=idx.device) if beta is None else beta
    return beta.masked_fill(idx < 0, MASKED_BETA)


def attention_scores(Q: torch.Tensor, K: torch.Tensor, scale: float, *, bias: torch.Tensor | None = None,
                     K_prompt: torch.Tensor | None = None, n_prompt: int = 0, first: int = 0,
                     keep_blocks: bool = False) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """Attention probability of each query to each key, averaged over the queries: Q [L, H, m, d], K [L, H, T, d]
    -> per-head score [L, H, T] (float32), and (if keep_blocks) the unnormalised block E = exp(s Q K^T + b - rowmax)
    per layer chunk, reused by the fit.

    bias [L, H, T]: a stored beta in every logit. K_prompt [L, H, n, d]: the prompt's own keys, which share the
    softmax under a causal mask (the queries are those of prompt tokens first..n_prompt-1, each seeing every earlier
    prompt key); None: the softmax runs over K alone (a fold's span)."""
    scores, blocks = [], []
    m, dev = Q.shape[2], Q.device
    causal = None
    if K_prompt is not None:
        row_token = first + torch.arange(m, device=dev) % (n_prompt - first)     # [m] prompt token of each row
        causal = torch.arange(n_prompt, device=dev)[None, :] <= row_token[:, None]   # [m, n]
    for c in range(0, Q.shape[0], LAYER_CHUNK):
        q = Q[c:c + LAYER_CHUNK].to(SOLVE_DTYPE)                                  # [c, H, m, d]
        k = K[c:c + LAYER_CHUNK].to(SOLVE_DTYPE)                                  # [c, H, T, d]
        logits = q @ k.transpose(-1, -2) * scale                                  # [c, H, m, T]
        if bias is not None:
            logits = logits + bias[c:c + LAYER_CHUNK].to(SOLVE_DTYPE).unsqueeze(-2)
        row_max = logits.amax(-1)                                                 # [c, H, m]
        if K_prompt is not None:
            kp = K_prompt[c:c + LAYER_CHUNK].to(SOLVE_DTYPE)                      # [c, H, n, d]
            logits_p = (q @ kp.transpose(-1, -2) * scale).masked_fill(~causal, -math.inf)  # [c, H, m, n]
            row_max = torch.maximum(row_max, logits_p.amax(-1))
        E = torch.exp(logits - row_max.unsqueeze(-1))                             # [c, H, m, T]
        denom = E.sum(-1)                                                         # [c, H, m]
        if K_prompt is not None:
            denom = denom + torch.exp(logits_p - row_max.unsqueeze(-1)).sum(-1)
        scores.append((E / denom.unsqueeze(-1)).mean(-2))                         # [c, H, T]
        if keep_blocks:
            blocks.append(E)
    return torch.cat(scores, dim=0), (blocks if keep_blocks else None)


def nnls_box(A: torch.Tensor, z: torch.Tensor, lo: float, hi: float, iters: int) -> torch.Tensor:
    """min ||A w - z|| s.t. lo <= w <= hi, batched: A [..., m, t], z [..., m] -> w [..., t].
    Accelerated projected gradient (FISTA) from w = 1 (beta = 0), step 1/L with L = ||A||_2^2."""
    At = A.transpose(-1, -2)                                                      # [..., t, m]
    v = torch.ones(A.shape[:-2] + (A.shape[-1], 1), dtype=A.dtype, device=A.device)   # [..., t, 1]
    for _ in range(8):  # power iteration on A^T A for its largest eigenvalue
        v = At @ (A @ v)
        v = v / v.norm(dim=-2, keepdim=True).clamp_min(1e-30)
    lipschitz = (A @ v).square().sum(dim=(-2, -1)).clamp_min(1e-12)[..., None] * 1.05  # [..., 1]
    w = torch.ones(A.shape[:-2] + (A.shape[-1],), dtype=A.dtype, device=A.device)   # [..., t]
    y, step_t = w, 1.0
    for _ in range(iters):
        grad = (At @ ((A @ y.unsqueeze(-1)).squeeze(-1) - z).unsqueeze(-1)).squeeze(-1)   # [..., t]
        w_next = (y - grad / lipschitz).clamp(lo, hi)
        t_next = (1 + math.sqrt(1 + 4 * step_t * step_t)) / 2
        y = w_next + ((step_t - 1) / t_next) * (w_next - w)
        w, step_t = w_next, t_next
    return w


def solve_values(X: torch.Tensor, Y: torch.Tensor, V_kept: torch.Tensor, ridge: float,
                 rows: torch.Tensor | None = None) -> torch.Tensor:
    """C2 = V_kept + X^T (X X^T + lam I)^-1 (Y - X V_kept); X [..., m, t], Y [..., m, d] -> [..., t, d].
    lam = ridge x the mean diagonal of X X^T over the `rows` [...] real query rows (None: all m; rows past them are
    zero padding of a batched solve and change nothing else)."""
    gram = X @ X.transpose(-1, -2)                                                # [..., m, m]
    diag = gram.diagonal(dim1=-2, dim2=-1)                                        # [..., m]
    mean = diag.mean(-1) if rows is None else diag.sum(-1) / rows.to(diag.dtype)  # [...]
    lam = ridge * mean.clamp_min(1e-12)                                           # [...]
    eye = torch.eye(gram.shape[-1], dtype=X.dtype, device=X.device)               # [m, m]
    gram = gram + lam[..., None, None] * eye
    residual = Y - X @ V_kept                                                     # [..., m, d]
    # a non-finite block would make LAPACK fail for the whole batch: solve the identity there, return NaN for it
    ok = torch.isfinite(gram).all(dim=(-2, -1)) & torch.isfinite(residual).all(dim=(-2, -1))   # [...]
    gram = torch.where(ok[..., None, None], gram, eye)
    # gram is symmetric positive definite (ridge > 0): Cholesky, not LU. MKL's batched LU (torch.linalg.solve) can
    # hang once its thread team exists and torch runs more than one thread (tests/test_matching.py)
    chol, info = torch.linalg.cholesky_ex(gram)                                   # [..., m, m], [...]
    ok = ok & (info == 0)
    chol = torch.where(ok[..., None, None], chol, eye)
    sol = torch.cholesky_solve(torch.where(ok[..., None, None], residual, 0.0), chol)   # [..., m, d]
    C2 = V_kept + X.transpose(-1, -2) @ sol                                       # [..., t, d]
    return torch.where(ok[..., None, None], C2, float("nan"))


@dataclass
class FitResult:
    """beta [L, H, t] (float32, on top of any stored bias), values [L, H, t, d] (the cache's dtype), the mean
    relative error of the block output with the fit and with the kept positions alone, and why the fit was
    replaced by the plain selection in some (layer, KV head) pairs (None: nowhere)."""

    beta: torch.Tensor
    values: torch.Tensor
    error: float
    error_topk: float
    fallback: str | None
    time_beta_s: float
    time_values_s: float


@dataclass
class FitProblem:
    """What the fit of one block solves, per (layer, KV head): A [L, H, m, t] the kept columns of E (rows scaled to
    a max of 1), z [L, H, m] the mass of the whole block, Y [L, H, m, d] its output, V_kept [L, H, t, d] the kept
    values (float32), and the cache's value dtype. Several problems (a batch of calls) are solved as one.

    A ragged problem (a global allocation's right-padded rows): its rows (layer, KV head) sorted by their real kept
    count, `order` [L H] the sorted rows' original (flat) indices, z and Y in that order, and A and V_kept as a list
    of pieces, each H consecutive sorted rows cut to its widest row ([1, H, m, t_c], [1, H, t_c, d]; a row's columns
    past its count are PAD: zero). The rows' fits are independent, so the order changes nothing but which rows share
    a piece: a piece of narrow rows is solved at its own width."""

    A: torch.Tensor | list[torch.Tensor]
    z: torch.Tensor
    Y: torch.Tensor
    V_kept: torch.Tensor | list[torch.Tensor]
    dtype: torch.dtype
    time_s: float = 0.0
    order: torch.Tensor | None = None

    @property
    def step(self) -> int:
        """Leading rows per unit of the solve: a layer chunk, or one piece of a ragged problem."""
        return 1 if isinstance(self.A, list) else LAYER_CHUNK

    def piece(self, x: torch.Tensor | list[torch.Tensor], c: int) -> torch.Tensor:
        """A or V_kept of the unit starting at leading row c (of the sorted rows, for a ragged problem)."""
        return x[c] if isinstance(x, list) else x[c:c + LAYER_CHUNK]

    def width(self, c: int) -> int:
        """Columns of the layer chunk starting at c."""
        return self.piece(self.A, c).shape[-1]


def fit_problem(Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, idx: torch.Tensor, scale: float, *,
                blocks: list[torch.Tensor] | None = None, bias: torch.Tensor | None = None) -> FitProblem:
    """The fit targets for the kept positions idx [L, H, t] of K, V [L, H, T, d] under queries Q [L, H, m, d]
    (PAD slots: zero columns of A and zero kept values, so `solve_fits` leaves them at w = 1 and value 0).
    `blocks`: E per layer chunk from `attention_scores`, reused (its rows are rescaled to a max of 1 over the block,
    exactly the recomputed E); None: recomputed. bias [L, H, T]: stored beta already in every logit."""
    t0 = time.perf_counter()
    L, H = idx.shape[:2]
    ragged = padded(idx)
    if ragged:   # each sorted piece of H rows at its widest row's count, filled row by row below
        widths = (idx >= 0).sum(-1).flatten()                                    # [L H]
        order = widths.argsort(stable=True)                                      # [L H] sorted rows
        flat = idx.flatten(0, 1)                                                 # [L H, t]
        counts, where = widths.tolist(), [0] * (L * H)                           # where: a row's sorted slot
        for k, r in enumerate(order.tolist()):
            where[r] = k
        m, d = Q.shape[-2], V.shape[-1]
        A_pieces = [Q.new_zeros(H, m, max(1, max(counts[r] for r in order[g:g + H].tolist())), dtype=SOLVE_DTYPE)
                    for g in range(0, L * H, H)]                                 # [H, m, w] per piece
        V_pieces = [Q.new_zeros(a.shape[0], a.shape[-1], d, dtype=SOLVE_DTYPE) for a in A_pieces]   # [n, w, d]
    As, zs, Ys, Vs = [], [], [], []
    for i, c in enumerate(range(0, Q.shape[0], LAYER_CHUNK)):
        q, k, v = (x[c:c + LAYER_CHUNK].to(SOLVE_DTYPE) for x in (Q, K, V))      # [c, H, *, d]
        ix = idx[c:c + LAYER_CHUNK]                                              # [c, H, t]
        if blocks is not None:  # E from scoring: rows rescaled to a max of 1 where it matters (A, z)
            E = blocks[i]                                                        # [c, H, m, T]
            row_scale = 1.0 / E.amax(-1).clamp_min(1e-30)                        # [c, H, m]
        else:
            logits = q @ k.transpose(-1, -2) * scale                             # [c, H, m, T]
            if bias is not None:
                logits = logits + bias[c:c + LAYER_CHUNK].to(SOLVE_DTYPE).unsqueeze(-2)
            E = torch.exp(logits - logits.amax(-1, keepdim=True))
            row_scale = torch.ones(E.shape[:-1], dtype=E.dtype, device=E.device)
        mass = E.sum(-1)                                                         # [c, H, m]
        Ys.append((E @ v) / mass.unsqueeze(-1))                                  # [c, H, m, d]
        zs.append(mass * row_scale)                                              # [c, H, m]
        if ragged:   # a row's real columns only, straight into its sorted piece (the rest stays PAD: zero)
            for r in range(c * H, (c + ix.shape[0]) * H):
                n, (layer, h) = counts[r], divmod(r - c * H, H)
                cols = flat[r, :n]                                               # [n]
                A_piece, V_piece, j = A_pieces[where[r] // H], V_pieces[where[r] // H], where[r] % H
                torch.mul(E[layer, h].index_select(-1, cols), row_scale[layer, h].unsqueeze(-1),
                          out=A_piece[j, :, :n])                                 # [m, n]
                torch.index_select(v[layer, h], 0, cols, out=V_piece[j, :n])     # [n, d]
            continue
        A = E.gather(-1, ix.unsqueeze(-2).expand(-1, -1, E.shape[-2], -1)) * row_scale.unsqueeze(-1)
        As.append(A)                                                             # [c, H, m, t]
        Vs.append(gather_positions(v, ix))                                       # [c, H, t, d]
    z, Y = torch.cat(zs), torch.cat(Ys)                                          # [L, H, m], [L, H, m, d]
    if not ragged:
        return FitProblem(A=torch.cat(As), z=z, Y=Y, V_kept=torch.cat(Vs), dtype=V.dtype,
                          time_s=time.perf_counter() - t0)

    def sort(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(0, 1)[order].unflatten(0, (L, H))

    return FitProblem(A=[a.unflatten(0, (-1, H)) for a in A_pieces], z=sort(z), Y=sort(Y),
                      V_kept=[v.unflatten(0, (-1, H)) for v in V_pieces], dtype=V.dtype,
                      time_s=time.perf_counter() - t0, order=order)


def _pad(x: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    """Zero-pad the last len(sizes) dims of x up to `sizes`."""
    pad: list[int] = []
    for have, want in zip(reversed(x.shape[-len(sizes):]), reversed(sizes)):
        pad += [0, want - have]
    return torch.nn.functional.pad(x, pad) if any(pad) else x


def solve_fits(problems: list[FitProblem], *, ridge: float, beta_max: float, nnls_iters: int) -> list[FitResult]:
    """Solve several fits as one: layer chunks of every problem are zero-padded to the largest m (query rows) and t
    (kept positions) and stacked on the leading dim, so one NNLS and one batched solve serve many (groups bounded by
    SOLVE_ELEMENTS). A zero row adds nothing to ||A w - z|| nor to the value solve (its ridge counts only the real
    rows); a zero column leaves its w at 1 and its value at V_kept, and is cut off. A ragged problem (a global
    allocation's padded rows, sorted by width in pieces: `FitProblem`) is solved piece by piece at each piece's width,
    pieces of very different widths kept apart (WIDTH_SLACK), so its cost follows the kept total, not rows x the
    longest row; its results go back to the rows' own order, right-padded to the longest row. A (layer, KV head) pair
    whose fit is not finite falls back to the selection alone (beta = 0, original values). Solve time is shared by
    size."""
    lo, hi = math.exp(-beta_max), math.exp(beta_max)
    units = [(i, c, p.width(c)) for i, p in enumerate(problems) for c in range(0, p.z.shape[0], p.step)]
    pieces: list[list[tuple[torch.Tensor, ...]]] = [[] for _ in problems]
    times = [[p.time_s, 0.0] for p in problems]
    while units:
        group = [units.pop(0)]
        m, t, narrowest = problems[group[0][0]].z.shape[-1], group[0][2], group[0][2]
        while units:
            i, _, w_i = units[0]
            m2, t2 = max(m, problems[i].z.shape[-1]), max(t, w_i)
            size = sum(problems[j].step for j, _, _ in group) + problems[i].step             # leading rows
            if size * problems[i].z.shape[1] * m2 * max(m2, t2) > SOLVE_ELEMENTS:
                break
            if t2 > WIDTH_SLACK * min(narrowest, w_i) + 32:
                break
            group.append(units.pop(0))
            m, t, narrowest = m2, t2, min(narrowest, w_i)
        sl = [(problems[i], c) for i, c, _ in group]
        d = problems[0].Y.shape[-1]
        t0 = time.perf_counter()
        A = torch.cat([_pad(p.piece(p.A, c), (m, t)) for p, c in sl])           # [G, H, m, t]
        z = torch.cat([_pad(p.z[c:c + p.step], (m,)) for p, c in sl])           # [G, H, m]
        w = nnls_box(A, z, lo, hi, nnls_iters)                                   # [G, H, t]
        Aw = A * w.unsqueeze(-2)                                                 # [G, H, m, t]
        X = Aw / Aw.sum(-1, keepdim=True).clamp_min(1e-30)                       # softmax(s Q C1^T + beta)
        t1 = time.perf_counter()
        Y = torch.cat([_pad(p.Y[c:c + p.step], (m, d)) for p, c in sl])         # [G, H, m, d]
        V_kept = torch.cat([_pad(p.piece(p.V_kept, c), (t, d)) for p, c in sl])  # [G, H, t, d]
        rows = torch.cat([torch.full(p.z[c:c + p.step].shape[:-1], p.z.shape[-1], device=A.device)
                          for p, c in sl])                                       # [G, H]
        C2 = solve_values(X, Y, V_kept, ridge, rows)                             # [G, H, t, d]
        t2 = time.perf_counter()
        X_topk = A / A.sum(-1, keepdim=True).clamp_min(1e-30)                    # [G, H, m, t]
        y_norm = Y.norm(dim=(-2, -1)).clamp_min(1e-30)                           # [G, H]
        err = (X @ C2 - Y).norm(dim=(-2, -1)) / y_norm                           # [G, H]
        err_topk = (X_topk @ V_kept - Y).norm(dim=(-2, -1)) / y_norm             # [G, H]
        at = 0
        for (i, c, tp), (p, _) in zip(group, sl):
            n = min(p.step, p.z.shape[0] - c)
            r = slice(at, at + n)
            at += n
            b, v, e = w[r, :, :tp].log(), C2[r, :, :tp], err[r]                  # [n, H, tp], [n, H, tp, d], [n, H]
            bad = ~(torch.isfinite(b).all(-1) & torch.isfinite(v).all(dim=(-2, -1)) & torch.isfinite(e))  # [n, H]
            if bad.any():   # the selection alone there
                b = torch.where(bad.unsqueeze(-1), torch.zeros_like(b), b)
                v = torch.where(bad[..., None, None], p.piece(p.V_kept, c), v)
                e = torch.where(bad, err_topk[r], e)
            pieces[i].append((b, v, e, err_topk[r], bad))
            times[i][0] += (t1 - t0) * n / A.shape[0]
            times[i][1] += (t2 - t1) * n / A.shape[0]
    out = []
    for p, parts, (t_beta, t_values) in zip(problems, pieces, times):
        e, e_topk, bad = (torch.cat(x) for x in list(zip(*parts))[2:])            # [L, H]
        if p.order is None:
            b, c2 = (torch.cat(x) for x in list(zip(*parts))[:2])                # [L, H, t], [L, H, t, d]
        else:   # back to the rows' own order, right-padded to the longest row (zeros: PAD slots)
            L, H = p.z.shape[:2]
            t, d = max(x[0].shape[-1] for x in parts), p.Y.shape[-1]
            b = e.new_zeros(L * H, t)                                             # [L H, t]
            c2 = e.new_zeros(L * H, t, d)                                         # [L H, t, d]
            at = 0
            for beta, values, *_ in parts:
                rows = p.order[at:at + beta.shape[0] * H]
                at += len(rows)
                b[rows, :beta.shape[-1]] = beta.flatten(0, 1)
                c2[rows, :beta.shape[-1]] = values.flatten(0, 1)
            back = torch.empty_like(p.order)
            back[p.order] = torch.arange(len(p.order), device=p.order.device)    # [L H] sorted index of each row
            b, c2 = b.unflatten(0, (L, H)), c2.unflatten(0, (L, H))
            e, e_topk, bad = (x.flatten()[back].view(L, H) for x in (e, e_topk, bad))
        fallback = None
        if bad.any():
            fallback = (f"non-finite fit in {int(bad.sum())} of {bad.numel()} (layer, KV head) pairs: "
                        "used selection only (beta = 0, original values) there")
        out.append(FitResult(beta=b, values=c2.to(p.dtype), error=float(e.mean()), error_topk=float(e_topk.mean()),
                             fallback=fallback, time_beta_s=t_beta, time_values_s=t_values))
    return out


def fit(Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, idx: torch.Tensor, scale: float, *, ridge: float,
        beta_max: float, nnls_iters: int, blocks: list[torch.Tensor] | None = None,
        bias: torch.Tensor | None = None) -> FitResult:
    """Fit beta and values C2 for the kept positions idx [L, H, t] of K, V [L, H, T, d] under queries Q [L, H, m, d]
    (`fit_problem`, then `solve_fits`); the returned beta is on top of any stored bias (compose: add bias[idx])."""
    problem = fit_problem(Q, K, V, idx, scale, blocks=blocks, bias=bias)
    return solve_fits([problem], ridge=ridge, beta_max=beta_max, nnls_iters=nnls_iters)[0]
