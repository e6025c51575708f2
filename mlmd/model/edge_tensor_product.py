"""e3nn's weighted "uvu" tensor product of node features and edge harmonics, block-wise, fused with the gather
of the neighbours' features and the sum over each centre's edges (EdgeTensorProduct), and optionally with the
channel mixing of the IrrepsLinear that follows it (forward_mixed). The block layout and why: mlmd.model.irreps_ops.
"""

from typing import List, Optional, Tuple

import torch
from e3nn import o3
from torch import nn

from mlmd.model.irreps_linear import IrrepsLinear, adopt_state

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

    def edge_inputs(
        self, xs: List[torch.Tensor], weights: torch.Tensor, neighbor: torch.Tensor
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """The weights per instruction and the neighbours' feature blocks, per edge."""
        # split, not slices: its backward is one concatenation instead of a zero-filled copy per slice
        ws = list(torch.split(weights, self.muls, dim=1))
        xe = [torch.index_select(x, 0, neighbor) for x in xs]
        return ws, xe

    def forward(
        self,
        xs: List[torch.Tensor],
        sh: List[torch.Tensor],
        weights: torch.Tensor,
        center: torch.Tensor,
        neighbor: torch.Tensor,
        n_nodes: int,
    ) -> List[torch.Tensor]:
        ws, xe = self.edge_inputs(xs, weights, neighbor)
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
        ws, xe = self.edge_inputs(xs, weights, neighbor)
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
