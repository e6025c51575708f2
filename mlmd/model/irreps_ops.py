"""Block-wise evaluation of e3nn's equivariant layers, for the message passing of mlmd.model.equivariant.

Each module here is built from the e3nn module it stands for (o3.Linear, o3.TensorProduct with per-edge "uvu"
weights, o3.FullyConnectedTensorProduct with one-hot species): it takes over that module's parameters and
buffers under the same names, its initialisation and its instructions (path weights, weight layout), and
computes the same function up to float round-off (tests/unit/test_irreps_ops.py compares with e3nn).

Why not call e3nn: its generated code works on one flat [.., dim] tensor, slicing it per irrep and
concatenating the results; on the per-edge tensors of a message-passing step every slice costs a full-size
zero-filled gradient in the backward pass (the forces), and that dominated the evaluation time. Here a feature
is a list of blocks [n, 2l+1, mul] (component-major, channels last): no slicing, the channel mixing is a plain
matrix product, and the couplings that occur for l <= 2 with the l = 0 or l_in = l_sh paths are products and
dot products (the Clebsch-Gordan matrix is then a multiple of the identity), a small matrix product otherwise.
"""

import math
from typing import List, Optional

import torch
from e3nn import o3
from torch import nn


def _silu_second_moment_scale() -> float:
    # 1 / sqrt(E[silu(x)^2]) for x ~ N(0, 1), so activations keep unit second moment (e3nn's normalize2mom idea)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1_000_000, generator=gen, dtype=torch.float64)
    return float(torch.nn.functional.silu(x).pow(2).mean().rsqrt())


SILU_SCALE = _silu_second_moment_scale()

def spherical_harmonics(l_max: int, vectors: torch.Tensor, r: torch.Tensor) -> List[torch.Tensor]:
    """e3nn's real spherical harmonics of the unit vectors (normalize=True, "component": |Y^l|^2 = 2l+1),
    one block [E, 2l+1] per l = 0..l_max (l <= 2; e3nn's polynomials in x, y, z order)."""
    if l_max > 2:
        raise ValueError("spherical_harmonics: l_max <= 2 (SphericalHarmonics goes further)")
    out = [torch.ones_like(r).unsqueeze(1)]
    if l_max == 0:
        return out
    u = vectors / r.unsqueeze(1)
    out.append(math.sqrt(3.0) * u)
    if l_max == 1:
        return out
    x = u[:, 0]
    y = u[:, 1]
    z = u[:, 2]
    x2 = x * x
    z2 = z * z
    y2 = y * y
    out.append(
        torch.stack(
            [
                math.sqrt(15.0) * x * z,
                math.sqrt(15.0) * x * y,
                math.sqrt(5.0) * (y2 - 0.5 * (x2 + z2)),
                math.sqrt(15.0) * y * z,
                (0.5 * math.sqrt(15.0)) * (z2 - x2),
            ],
            dim=1,
        )
    )
    return out


class SphericalHarmonics(nn.Module):
    """spherical_harmonics for any l_max: closed forms up to l = 2, then Y^(l+1) from Y^l and the unit vector
    through the Clebsch-Gordan coefficients C(l+1, l, 1), with a constant per l fixed against e3nn."""

    coefs: List[torch.Tensor]

    def __init__(self, l_max: int) -> None:
        super().__init__()
        self.l_max = int(l_max)
        self.coefs = []
        for l in range(3, self.l_max + 1):
            c = o3.wigner_3j(l, l - 1, 1, dtype=torch.float64)
            # the scale (and sign) that makes the recurrence give e3nn's Y^l, from a few random directions
            v = torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(l))
            ref = o3.spherical_harmonics(list(range(l + 1)), v, True, normalization="component")
            prev = ref[:, (l - 1) ** 2 : l * l]
            rec = torch.einsum("ijk,ej,ek->ei", c, prev, torch.nn.functional.normalize(v, dim=1))
            target = ref[:, l * l : (l + 1) ** 2]
            k = float((rec * target).sum() / (rec * rec).sum())
            if not torch.allclose(k * rec, target, atol=1e-9):
                raise RuntimeError(f"spherical harmonics recurrence does not reproduce e3nn at l = {l}")
            self.coefs.append(k * c)

    def forward(self, vectors: torch.Tensor, r: torch.Tensor) -> List[torch.Tensor]:
        out = spherical_harmonics(min(self.l_max, 2), vectors, r)
        if self.l_max > 2:
            u = vectors / r.unsqueeze(1)
            for coef in self.coefs:
                c = coef.to(dtype=u.dtype, device=u.device)
                prev = out[-1]
                # Y^l_i = sum_jk c_ijk Y^(l-1)_j u_k
                out.append(torch.einsum("ej,ijk->eik", prev, c).mul(u.unsqueeze(1)).sum(2))
        return out


class _Buffers(nn.Module):
    """Holds buffers under a submodule's name (no computation)."""


def adopt_state(module: nn.Module, ref: nn.Module) -> None:
    """Give module every parameter and buffer of ref under the same names (ref's nested ones included, e.g.
    the Clebsch-Gordan buffers of e3nn's compiled code), so that state dicts written with ref keep loading."""
    for name, tensor in ref.state_dict(keep_vars=True).items():
        owner = module
        *path, leaf = name.split(".")
        for part in path:
            if not hasattr(owner, part):
                owner.add_module(part, _Buffers())
            owner = getattr(owner, part)
        if isinstance(tensor, nn.Parameter):
            owner.register_parameter(leaf, tensor)
        else:
            owner.register_buffer(leaf, tensor)


class IrrepsLinear(nn.Module):
    """o3.Linear(irreps_in, irreps_out) (no biases) on blocks: out_o = sum_(i -> o) x_i @ (w_io * path weight).

    Worked per irrep: the input blocks of one irrep, side by side, times one matrix (group_matrices) give the
    output blocks of that irrep side by side.
    """

    group_in: List[List[int]]
    group_out: List[List[int]]
    group_instructions: List[List[List[int]]]
    group_path_weights: List[List[float]]
    mul_in: List[int]
    mul_out: List[int]
    dim_out: List[int]

    def __init__(self, irreps_in: o3.Irreps, irreps_out: o3.Irreps) -> None:
        super().__init__()
        ref = o3.Linear(irreps_in, irreps_out)
        adopt_state(self, ref)
        self.mul_in = [mul for mul, _ in irreps_in]
        self.mul_out = [mul for mul, _ in irreps_out]
        self.dim_out = [ir.dim for _, ir in irreps_out]
        irreps = []  # the irreps that reach an output, in order of first output
        for _, ir in irreps_out:
            if ir not in irreps and any(ir_in == ir for _, ir_in in irreps_in):
                irreps.append(ir)
        self.group_in = [[i for i, (_, ir_in) in enumerate(irreps_in) if ir_in == ir] for ir in irreps]
        self.group_out = [[o for o, (_, ir_out) in enumerate(irreps_out) if ir_out == ir] for ir in irreps]
        # per group: [row, column, mul_in, mul_out, weight offset] of each instruction's block of the matrix
        self.group_instructions = [[] for _ in irreps]
        self.group_path_weights = [[] for _ in irreps]
        offset = 0
        for ins in ref.instructions:
            g = irreps.index(irreps_in[ins.i_in].ir)
            row = sum(self.mul_in[i] for i in self.group_in[g][: self.group_in[g].index(ins.i_in)])
            col = sum(self.mul_out[o] for o in self.group_out[g][: self.group_out[g].index(ins.i_out)])
            self.group_instructions[g].append([row, col, ins.path_shape[0], ins.path_shape[1], offset])
            self.group_path_weights[g].append(float(ins.path_weight))
            offset += ins.path_shape[0] * ins.path_shape[1]

    def group_matrices(self) -> List[torch.Tensor]:
        """Per irrep: the [sum of its input muls, sum of its output muls] matrix, path weights included."""
        mats: List[torch.Tensor] = []
        for g in range(len(self.group_in)):
            rows = 0
            for i in self.group_in[g]:
                rows += self.mul_in[i]
            cols = 0
            for o in self.group_out[g]:
                cols += self.mul_out[o]
            mat = torch.zeros(rows, cols, dtype=self.weight.dtype, device=self.weight.device)
            for j, (row, col, u, m, off) in enumerate(self.group_instructions[g]):
                block = self.weight[off : off + u * m].view(u, m) * self.group_path_weights[g][j]
                mat[row : row + u, col : col + m] = block
            mats.append(mat)
        return mats

    def split_outputs(self, groups: List[torch.Tensor], like: torch.Tensor) -> List[torch.Tensor]:
        """Per-irrep results [n, 2l+1, sum of output muls] -> the output blocks, in order (zeros if none;
        n, dtype and device as like's)."""
        parts: List[List[torch.Tensor]] = []
        for g in range(len(groups)):
            muls: List[int] = []
            for o in self.group_out[g]:
                muls.append(self.mul_out[o])
            parts.append(list(torch.split(groups[g], muls, dim=2)))
        outs: List[torch.Tensor] = []
        for o in range(len(self.mul_out)):
            found = False
            for g in range(len(groups)):
                for j, o2 in enumerate(self.group_out[g]):
                    if o2 == o:
                        outs.append(parts[g][j])
                        found = True
            if not found:
                outs.append(torch.zeros(like.shape[0], self.dim_out[o], self.mul_out[o], dtype=like.dtype,
                                        device=like.device))
        return outs

    def forward(self, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        mats = self.group_matrices()
        groups: List[torch.Tensor] = []
        for g in range(len(self.group_in)):
            ins = self.group_in[g]
            x = xs[ins[0]] if len(ins) == 1 else torch.cat([xs[i] for i in ins], dim=2)
            groups.append(torch.matmul(x, mats[g]))
        return self.split_outputs(groups, xs[0])


# how an instruction couples x (l1) and Y (l2) into l_out: C = c * identity-like in the first three cases
# (plain ints: TorchScript reads no module-level constants; forward names them in comments)
_SCALE = 0  # l2 = 0: c x
_OUTER = 1  # l1 = 0: c x Y
_DOT = 2  # l_out = 0, l1 = l2: c <x, Y>
_GENERAL = 3  # sum_ij C_ijk x_i Y_j


def edge_sum(center: torch.Tensor, msg: torch.Tensor, n_nodes: int) -> torch.Tensor:
    """Per node, the sum of the messages msg [E, d, U] of the edges whose centre it is: [n_nodes, d, U].
    index_put with accumulation, not index_add: the backward of index_add keeps the whole messages tensor (for
    its shape only), this one only the index."""
    out = torch.zeros(n_nodes, msg.shape[1], msg.shape[2], dtype=msg.dtype, device=msg.device)
    indices: List[Optional[torch.Tensor]] = [center]
    return torch.index_put(out, indices, msg, accumulate=True)


def times_rows(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """a [E, U] or [E, d, U] times the per-edge weights w [E, U]; or w [E/2, U] when the edges are pairs
    followed by their reverses in the same order (both halves get the same weights, broadcast, not copied)."""
    if a.dim() == 3:
        w = w.unsqueeze(1)
    if w.shape[0] == a.shape[0]:
        return a * w
    halves = [2, w.shape[0]]
    halves.extend(a.shape[1:])
    return (a.reshape(halves) * w.unsqueeze(0)).reshape(a.shape)


def uvu_instructions(irreps_in: o3.Irreps, irreps_sh: o3.Irreps, wanted: set) -> tuple:
    """Every path irreps_in[i] x irreps_sh[j] -> ir_out with ir_out among `wanted`, as "uvu" instructions with
    per-edge weights: (irreps of the outputs, one block per path with the input's multiplicity; instructions)."""
    mid = []
    instructions = []
    for i, (mul, ir_in) in enumerate(irreps_in):
        for j, (_, ir_sh) in enumerate(irreps_sh):
            for ir_out in ir_in * ir_sh:
                if ir_out in wanted:
                    instructions.append((i, j, len(mid), "uvu", True))
                    mid.append((mul, ir_out))
    return o3.Irreps(mid), instructions


class EdgeTensorProduct(nn.Module):
    """o3.TensorProduct(irreps_in, irreps_sh, irreps_out, "uvu" instructions, per-edge weights) fused with the
    gather of the neighbour's features and the sum over each centre's edges.

    forward returns, per instruction, sum_(edges e of centre i) TP(x_neighbor(e), Y_e, w_e) as [N, 2l+1, mul].
    The constants c of the first three kinds of coupling are not applied here: they are in weight_scales(),
    which the caller folds into the matrix that produces the weights.
    """

    weight_numel: int
    kinds: List[int]
    in1: List[int]
    in2: List[int]
    muls: List[int]
    dims_out: List[int]
    scales: List[float]
    general: List[torch.Tensor]
    mix_groups: List[List[int]]
    premix: List[bool]

    def __init__(
        self, irreps_in: o3.Irreps, irreps_sh: o3.Irreps, irreps_out: o3.Irreps, instructions: list
    ) -> None:
        super().__init__()
        ref = o3.TensorProduct(
            irreps_in, irreps_sh, irreps_out, instructions, shared_weights=False, internal_weights=False
        )
        adopt_state(self, ref)  # e3nn's buffers (no parameters: the weights come per edge)
        self.weight_numel = int(ref.weight_numel)
        self.kinds = []
        self.in1 = []
        self.in2 = []
        self.muls = []
        self.dims_out = []
        self.scales = []
        self.general = []
        self.mix_groups = []
        self.premix = []
        for ins in ref.instructions:
            if ins.connection_mode != "uvu" or not ins.has_weight:
                raise ValueError("EdgeTensorProduct takes weighted 'uvu' instructions only")
            l1 = irreps_in[ins.i_in1].ir.l
            l2 = irreps_sh[ins.i_in2].ir.l
            lo = irreps_out[ins.i_out].ir.l
            cg = ins.path_weight * o3.wigner_3j(l1, l2, lo, dtype=torch.float64)
            c = float(cg[0, 0, 0])
            if l2 == 0:
                kind, ident = _SCALE, torch.eye(2 * l1 + 1, dtype=torch.float64).unsqueeze(1)
            elif l1 == 0:
                kind, ident = _OUTER, torch.eye(2 * l2 + 1, dtype=torch.float64).unsqueeze(0)
            elif lo == 0 and l1 == l2:
                kind, ident = _DOT, torch.eye(2 * l1 + 1, dtype=torch.float64).unsqueeze(2)
            else:
                kind, ident, c = _GENERAL, cg, 1.0
            if not torch.allclose(cg, c * ident, atol=1e-12):
                raise RuntimeError(f"unexpected Clebsch-Gordan structure for {l1} x {l2} -> {lo}")
            self.kinds.append(kind)
            self.in1.append(ins.i_in1)
            self.in2.append(ins.i_in2)
            self.muls.append(irreps_in[ins.i_in1].mul)
            self.dims_out.append(2 * lo + 1)
            self.scales.append(c)
            # Y_e -> the matrix M_e[i, k] = sum_j C_ijk Y_ej: C as [d2, d1 * d_out]. Constants are float64
            # tensor attributes (neither weights nor buffers: state dicts keep e3nn's keys; and TorchScript's
            # torch.tensor(list) would round them to float32)
            d1, d2, do = cg.shape
            self.general.append(cg.permute(1, 0, 2).reshape(d2, d1 * do) if kind == _GENERAL else torch.zeros(0))
        # the weight vector's layout: instruction by instruction, mul entries each
        self.weight_scale = torch.tensor(
            [c for c, mul in zip(self.scales, self.muls) for _ in range(mul)], dtype=torch.float64
        )
        if self.weight_scale.numel() != self.weight_numel:
            raise RuntimeError("EdgeTensorProduct: weight layout differs from e3nn's")

    def weight_scales(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return self.weight_scale.to(dtype=dtype, device=device)

    def mix_into(self, linear: IrrepsLinear) -> None:
        """Prepare forward_mixed: this product's output blocks are linear's input blocks."""
        self.mix_groups = [list(g) for g in linear.group_in]
        # mix before the sum over edges where that narrows the per-edge messages (fewer output channels)
        self.premix = [
            sum(linear.mul_out[o] for o in go) < sum(self.muls[k] for k in gi)
            for gi, go in zip(linear.group_in, linear.group_out)
        ]

    def message(self, k: int, xe: List[torch.Tensor], sh: List[torch.Tensor], ws: List[torch.Tensor],
                mix: Optional[torch.Tensor]) -> torch.Tensor:
        """Instruction k's per-edge message [E, 2l_out+1, mul] (times mix [mul, c] if given: [E, 2l_out+1, c])."""
        kind = self.kinds[k]
        x = xe[self.in1[k]]
        y = sh[self.in2[k]]
        w = ws[k]
        if kind == 1:  # _OUTER: c x Y; mixing the channels first leaves the outer product fewer
            t = times_rows(x.squeeze(1), w)
            if mix is not None:
                t = torch.matmul(t, mix)
            return y.unsqueeze(2) * t.unsqueeze(1)
        if kind == 0:  # _SCALE (Y^0 = 1 in the "component" normalisation)
            msg = times_rows(x, w)
        elif kind == 2:  # _DOT
            msg = times_rows((x * y.unsqueeze(2)).sum(1), w).unsqueeze(1)
        else:  # _GENERAL
            d1 = x.shape[1]
            do = self.dims_out[k]
            c = self.general[k].to(dtype=y.dtype, device=y.device)
            m = torch.matmul(y, c).view(-1, d1, do)
            msg = times_rows(torch.bmm(m.transpose(1, 2), x), w)
        if mix is not None:
            msg = torch.matmul(msg, mix)
        return msg

    def forward(
        self,
        xs: List[torch.Tensor],
        sh: List[torch.Tensor],
        weights: torch.Tensor,
        center: torch.Tensor,
        neighbor: torch.Tensor,
        n_nodes: int,
    ) -> List[torch.Tensor]:
        # split, not slices: its backward is one concatenation instead of a zero-filled copy per slice
        ws = list(torch.split(weights, self.muls, dim=1))
        xe = [torch.index_select(x, 0, neighbor) for x in xs]
        outs: List[torch.Tensor] = []
        for k in range(len(self.kinds)):
            outs.append(edge_sum(center, self.message(k, xe, sh, ws, None), n_nodes))
        return outs

    def forward_mixed(
        self,
        xs: List[torch.Tensor],
        sh: List[torch.Tensor],
        weights: torch.Tensor,
        center: torch.Tensor,
        neighbor: torch.Tensor,
        n_nodes: int,
        mats: List[torch.Tensor],
        n_groups: int = -1,
    ) -> List[torch.Tensor]:
        """linear(forward(...)) for the IrrepsLinear given to mix_into, with its group_matrices() as mats:
        per output irrep [N, 2l+1, channels]; the mixing is done on the edges where that is cheaper.
        weights: one row per edge, or one per pair when the edges are pairs then their reverses (times_rows).
        n_groups >= 0: the first n_groups output irreps only (the rest is not computed)."""
        ws = list(torch.split(weights, self.muls, dim=1))
        xe = [torch.index_select(x, 0, neighbor) for x in xs]
        outs: List[torch.Tensor] = []
        for g in range(len(self.mix_groups) if n_groups < 0 else n_groups):
            mat = mats[g]
            if self.premix[g]:
                msgs: List[torch.Tensor] = []
                row = 0
                for k in self.mix_groups[g]:
                    msgs.append(self.message(k, xe, sh, ws, mat[row : row + self.muls[k]]))
                    row += self.muls[k]
                msg = msgs[0]
                for other in msgs[1:]:
                    msg = msg + other
                outs.append(edge_sum(center, msg, n_nodes))
            else:
                aggs: List[torch.Tensor] = []
                for k in self.mix_groups[g]:
                    aggs.append(edge_sum(center, self.message(k, xe, sh, ws, None), n_nodes))
                outs.append(torch.matmul(aggs[0] if len(aggs) == 1 else torch.cat(aggs, dim=2), mat))
        return outs


class SpeciesSelfConnection(nn.Module):
    """o3.FullyConnectedTensorProduct(irreps_in, n_species x 0e, irreps_out) with a one-hot species input:
    a linear map of each node's features with the weights of its species."""

    outs_of: List[List[int]]
    in_of: List[List[int]]
    offsets: List[List[int]]
    scales: List[List[float]]
    mul_in: List[int]
    mul_out: List[int]
    dim_out: List[int]

    def __init__(self, irreps_in: o3.Irreps, n_species: int, irreps_out: o3.Irreps) -> None:
        super().__init__()
        ref = o3.FullyConnectedTensorProduct(irreps_in, o3.Irreps(f"{n_species}x0e"), irreps_out)
        adopt_state(self, ref)
        self.n_species = int(n_species)
        self.mul_in = [mul for mul, _ in irreps_in]
        self.mul_out = [mul for mul, _ in irreps_out]
        self.dim_out = [ir.dim for _, ir in irreps_out]
        self.in_of = [[] for _ in irreps_out]
        self.offsets = [[] for _ in irreps_out]
        self.scales = [[] for _ in irreps_out]
        offset = 0
        for ins in ref.instructions:
            l1 = irreps_in[ins.i_in1].ir.l
            cg = ins.path_weight * o3.wigner_3j(l1, 0, l1, dtype=torch.float64)
            c = float(cg[0, 0, 0])
            if not torch.allclose(cg, c * torch.eye(2 * l1 + 1, dtype=torch.float64).unsqueeze(1), atol=1e-12):
                raise RuntimeError(f"unexpected Clebsch-Gordan structure for {l1} x 0 -> {l1}")
            self.in_of[ins.i_out].append(ins.i_in1)
            self.offsets[ins.i_out].append(offset)
            self.scales[ins.i_out].append(c)
            offset += ins.path_shape[0] * ins.path_shape[1] * ins.path_shape[2]

    def forward(self, xs: List[torch.Tensor], species: torch.Tensor, n_outputs: int = -1) -> List[torch.Tensor]:
        """n_outputs >= 0: the first n_outputs output blocks only."""
        outs: List[torch.Tensor] = []
        n = xs[0].shape[0]
        s = self.n_species
        for o in range(len(self.mul_out) if n_outputs < 0 else n_outputs):
            m = self.mul_out[o]
            d = self.dim_out[o]
            out = torch.zeros(n, d, m, dtype=xs[0].dtype, device=xs[0].device)
            for k in range(len(self.in_of[o])):
                i = self.in_of[o][k]
                u = self.mul_in[i]
                off = self.offsets[o][k]
                w = self.weight[off : off + u * s * m].view(u, s * m) * self.scales[o][k]
                y = torch.matmul(xs[i], w).view(n, d, s, m)
                pick = species.view(n, 1, 1, 1).expand(n, d, 1, m)
                out = out + torch.gather(y, 2, pick).squeeze(2)
            outs.append(out)
        return outs
