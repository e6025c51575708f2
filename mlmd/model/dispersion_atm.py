"""Axilrod-Teller-Muto three-body term of DFT-D3, in chunks of triples with memory bounded by the chunk size.

E_ATM = sum_{triples abc} s9 sqrt(C6_ab C6_ac C6_bc) (3 cos a cos b cos c + 1) / (r_ab r_ac r_bc)^3 * f,
f = 1 / (1 + 6 (R0_ab R0_ac R0_bc / (r_ab r_ac r_bc))^(alp/3)), R0 the scaled pairwise vdW radii (zero damping,
alp = 16, as simple-dftd3 does for every damping scheme), all three distances within the three-body cutoff.

Enumeration: each triple (up to a lattice translation) once per vertex of lowest atom index, with weight 1/k
for the k vertices sharing that index (periodic images of one atom): the centre a takes the unordered pairs
of its neighbour entries (b, c) with index >= a. At the 40-bohr cutoff in a dense phase a centre has thousands
of neighbours, i.e. millions of triples; they are processed ``chunk`` candidate triples at a time.

Autograd through millions of triples would keep every intermediate for the backward pass (12 GB for a
192-atom water box), so each chunk is evaluated without a graph (the caller runs it under no_grad), with the
analytic derivatives of its energy with respect to the pair vectors and to the CN weights ``w`` (through the
dense C6 matrix or through C6_ab = w_a.u_b). They are accumulated (memory: the entries and the C6 inputs, not
the triples) and returned; the caller chains dE/dw through dw/dCN and the CN pairs like the two-body term and
attaches everything as one zero-valued term on positions and cell, so no detach() is needed (openmm-torch
freezes the module, and freezing drops detach()). Limits: second derivatives of E_ATM are not available (D3
has no trainable parameters and is subtracted from the labels, so training does not need them), and the
gradient of an individual atom's share (``atomic_energies``) is not its own: only sums over all atoms
differentiate correctly.
"""

from typing import Optional, Tuple

import torch


def _pair_c6(
    u: torch.Tensor, w: torch.Tensor, species: torch.Tensor, c6_flat: Optional[torch.Tensor],
    a: torch.Tensor, b: torch.Tensor, n: int,
) -> torch.Tensor:
    if c6_flat is not None:
        return c6_flat.index_select(0, a * n + b)
    return (u[a, species[b]] * w[b]).sum(-1)


def _add_c6_grad(
    g: torch.Tensor, a: torch.Tensor, b: torch.Tensor, n: int, species: torch.Tensor, u: torch.Tensor,
    grad_c6: Optional[torch.Tensor], grad_w: Optional[torch.Tensor],
) -> None:
    """Accumulate dE/dC6_ab = g (per triple) into the dense C6 gradient, or into dE/dw through C6_ab = w_a.u_b."""
    if grad_c6 is not None:
        grad_c6.index_add_(0, a * n + b, g)
    elif grad_w is not None:
        grad_w.index_add_(0, a, g.unsqueeze(1) * u[b, species[a]])
        grad_w.index_add_(0, b, g.unsqueeze(1) * u[a, species[b]])


def three_body_energies(
    vec: torch.Tensor, r2: torch.Tensor, i: torch.Tensor, j: torch.Tensor, species: torch.Tensor,
    u: torch.Tensor, w: torch.Tensor, c6_flat: Optional[torch.Tensor], n: int, r0_atm: torch.Tensor,
    s9: float, alp: float, cutoff: float, chunk: int, need_grad: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ATM energy per atom (hartree; each triple split in thirds over its vertices), d(sum)/d(vec) [P,3],
    d(sum)/dw [N,R]; both derivatives zero without need_grad), see the module docstring.

    vec [P,3], r2 [P], i [P], j [P]: a half neighbour list (each pair of atoms/images once, vec = r_j - r_i,
    bohr); u [N,S,R], w [N,R]: the CN-weighted C6 factors (C6_ab = sum w_a u_b[s_a]); c6_flat: the dense
    C6 matrix [N*N] or None; r0_atm [S,S]: the scaled vdW radii; chunk: candidate triples per chunk.
    """
    cut2 = cutoff * cutoff
    sel = r2 <= cut2
    # directed entries centre -> other with index(centre) <= index(other); self-image pairs in both directions
    fwd = torch.nonzero(sel & (i <= j)).squeeze(1)
    bwd = torch.nonzero(sel & (i >= j)).squeeze(1)
    centre = torch.cat([i[fwd], j[bwd]])
    order = torch.argsort(centre, stable=True)
    # each sorted entry's pair in the list and its sign (entries from the pair's j end carry -vec)
    entry_pair = torch.cat([fwd, bwd])[order]
    entry_sign = torch.cat([torch.ones_like(fwd), -torch.ones_like(bwd)])[order].to(vec.dtype)
    atomic, grad_v, grad_w = directed_three_body(
        centre[order], torch.cat([j[fwd], i[bwd]])[order], vec.index_select(0, entry_pair) * entry_sign.unsqueeze(1),
        torch.arange(n, device=vec.device), species, u, w, c6_flat, n, r0_atm, s9, alp, cut2, chunk, need_grad)
    grad_vec = torch.zeros_like(vec)
    if need_grad:
        grad_vec.index_add_(0, entry_pair, entry_sign.unsqueeze(1) * grad_v)
    return atomic, grad_vec, grad_w


def directed_three_body(
    centre: torch.Tensor, other: torch.Tensor, vd: torch.Tensor, key: torch.Tensor, species: torch.Tensor,
    u: torch.Tensor, w: torch.Tensor, c6_flat: Optional[torch.Tensor], n: int, r0_atm: torch.Tensor, s9: float,
    alp: float, cut2: float, chunk: int, need_grad: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ATM energy per node (hartree, thirds), d(sum)/d(entry vector) [M,3], d(sum)/dw [N,R]) of the triples
    (a; b, c) formed by pairs of directed entries a -> b, a -> c of one centre (sorted by centre, vectors vd
    in bohr within the cutoff, every entry of a centre whose other end's key is >= the centre's: each triple of
    a system once, at its vertex of lowest key, weighted 1/k for the k vertices that share that key, i.e.
    periodic images of one atom). key: a node's atom (its index; an engine's atom ID for ghost copies)."""
    m = centre.shape[0]
    dev = vd.device
    counts = torch.bincount(centre, minlength=n)
    end = torch.cumsum(counts, 0)[centre]
    partners = end - torch.arange(m, device=dev) - 1  # later entries of the same centre
    cum = torch.cumsum(partners, 0)
    atomic = torch.zeros(n, dtype=vd.dtype, device=dev)
    grad_v = torch.zeros_like(vd)
    grad_c6: Optional[torch.Tensor] = None
    grad_w: Optional[torch.Tensor] = None
    if need_grad:
        if c6_flat is not None:
            grad_c6 = torch.zeros_like(c6_flat)
        else:
            grad_w = torch.zeros_like(w)
    c = alp / 3.0
    start = 0
    while start < m:
        base = 0
        if start > 0:
            base = int(cum[start - 1])
        limit = torch.tensor([base + chunk], dtype=cum.dtype, device=dev)
        stop = int(torch.searchsorted(cum, limit, right=True)[0])
        stop = max(stop, start + 1)
        parts = partners[start:stop]
        first_entry = start
        start = stop
        t = int(parts.sum())
        if t == 0:
            continue
        p = torch.repeat_interleave(torch.arange(first_entry, stop, device=dev), parts, output_size=t)
        offs = torch.repeat_interleave(torch.cumsum(parts, 0) - parts, parts, output_size=t)
        q = p + 1 + torch.arange(t, device=dev) - offs
        vbc = vd[q] - vd[p]
        z = (vbc * vbc).sum(1)
        keep = torch.nonzero(z <= cut2).squeeze(1)
        if keep.numel() == 0:
            continue
        p = p[keep]
        q = q[keep]
        vbc = vbc[keep]
        z = z[keep]
        if float(z.min()) < 1e-8:
            raise ValueError("two atoms at the same position (three-body term)")
        vab = vd[p]
        vac = vd[q]
        x = (vab * vab).sum(1)
        y = (vac * vac).sum(1)
        a = centre[p]
        b = other[p]
        cc = other[q]
        ka = key[a]
        weight = 1.0 / (1.0 + (key[b] == ka).to(x.dtype) + (key[cc] == ka).to(x.dtype))
        c6ab = _pair_c6(u, w, species, c6_flat, a, b, n)
        c6ac = _pair_c6(u, w, species, c6_flat, a, cc, n)
        c6bc = _pair_c6(u, w, species, c6_flat, b, cc, n)
        sa = species[a]
        sb = species[b]
        sc = species[cc]
        r0 = r0_atm[sa, sb] * r0_atm[sa, sc] * r0_atm[sb, sc]
        rr2 = x * y * z
        rr1 = torch.sqrt(rr2)
        rr3 = rr2 * rr1
        tt = torch.pow(r0 / rr1, c)
        fdmp = 1.0 / (1.0 + 6.0 * tt)
        fa = x + z - y
        fb = x - z + y
        fc = z + y - x
        qq = fa * fb * fc
        ang = (0.375 * qq / rr2 + 1.0) / rr3
        k = weight * s9 * torch.sqrt(torch.abs(c6ab * c6ac * c6bc))
        e = k * ang * fdmp
        third = e / 3.0
        atomic.index_add_(0, a, third)
        atomic.index_add_(0, b, third)
        atomic.index_add_(0, cc, third)
        if need_grad:
            # dE/dx = (k fdmp / x) [ (0.375 (x dQ/dx - 2.5 Q) / rr2 - 1.5) / rr3 + alp tt fdmp ang ], same for y, z
            kf = k * fdmp
            h = alp * tt * fdmp * ang
            ab = fa * fb
            ac = fa * fc
            bc = fb * fc
            s = 0.375 / rr2
            gx = kf / x * ((s * (x * (bc + ac - ab) - 2.5 * qq) - 1.5) / rr3 + h)
            gy = kf / y * ((s * (y * (ac + ab - bc) - 2.5 * qq) - 1.5) / rr3 + h)
            gz = kf / z * ((s * (z * (bc + ab - ac) - 2.5 * qq) - 1.5) / rr3 + h)
            gbc = (2.0 * gz).unsqueeze(1) * vbc
            grad_v.index_add_(0, p, (2.0 * gx).unsqueeze(1) * vab - gbc)
            grad_v.index_add_(0, q, (2.0 * gy).unsqueeze(1) * vac + gbc)
            half_e = 0.5 * e
            _add_c6_grad(half_e / c6ab, a, b, n, species, u, grad_c6, grad_w)
            _add_c6_grad(half_e / c6ac, a, cc, n, species, u, grad_c6, grad_w)
            _add_c6_grad(half_e / c6bc, b, cc, n, species, u, grad_c6, grad_w)
    grad_wn = torch.zeros_like(w)
    if grad_w is not None:
        grad_wn = grad_w
    elif grad_c6 is not None:
        grad_wn = _weights_grad_of_c6(grad_c6.reshape(n, n), u, species)
    return atomic, grad_v, grad_wn


def c6_inputs(
    w: torch.Tensor, species: torch.Tensor, ref_c6: torch.Tensor, dense_max: int
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(u [N,S,R] with C6_ab = u_a[s_b].w_b, the dense C6 matrix [N*N] when N <= dense_max else None)."""
    n = species.shape[0]
    u = torch.einsum("ia,itab->itb", w, ref_c6[species])
    if n > dense_max:
        return u, None
    mat = torch.zeros(n, n, dtype=w.dtype, device=w.device)
    for t in range(u.shape[1]):
        cols = torch.nonzero(species == t).squeeze(1)
        if cols.numel() > 0:
            mat = mat.index_copy(1, cols, u[:, t, :] @ w[cols].T)
    return u, mat.reshape(-1)


def _weights_grad_of_c6(g: torch.Tensor, u: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
    """dE/dw [N,R] from dE/dC6 [N,N] with C6_ab = u_a[s_b].w_b = u_b[s_a].w_a (the reference C6 are symmetric):
    dE/dw_a = sum_b (G + G^T)_ab u_b[s_a]."""
    both = g + g.t()
    out = torch.zeros(u.shape[0], u.shape[2], dtype=u.dtype, device=u.device)
    for t in range(u.shape[1]):
        rows = torch.nonzero(species == t).squeeze(1)
        if rows.numel() > 0:
            out.index_copy_(0, rows, both.index_select(0, rows) @ u[:, t, :])
    return out
