"""The linear maps of the message passing, block-wise: e3nn's o3.Linear (IrrepsLinear) and its
FullyConnectedTensorProduct with one-hot species (SpeciesSelfConnection), and adopt_state, which gives any of
the block-wise modules the parameters and buffers of the e3nn module it stands for (the block layout and why:
mlmd.model.irreps_ops).
"""

from typing import List

import torch
from e3nn import o3
from torch import nn


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
            # one mm over all rows (x may be a strided block of flat features: see SpeciesSelfConnection.forward)
            n, d, u = x.shape
            groups.append(torch.matmul(x.reshape(n * d, u), mats[g]).view(n, d, -1))
        return self.split_outputs(groups, xs[0])


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
                # one mm over every node's rows: a block cut out of flat features (the layer entries' _blocks) is a
                # strided view, on which matmul would expand w per node and run a batched vector-matrix product
                y = torch.matmul(xs[i].reshape(n * d, u), w).view(n, d, s, m)
                pick = species.view(n, 1, 1, 1).expand(n, d, 1, m)
                out = out + torch.gather(y, 2, pick).squeeze(2)
            outs.append(out)
        return outs
