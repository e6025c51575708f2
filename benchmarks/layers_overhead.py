"""In one process: CPU of the one-call local mode on the whole periodic system against the layer-by-layer path
summed over spatial subdomains (grid gx gy gz), as pair_style mlmd builds them (own atoms, ghosts within r_cut,
pairs among own atoms mirrored, edges to ghosts after them). No MPI: exchanges replaced by copies."""
import sys, time
import ase.io, numpy as np, torch
from ase.neighborlist import neighbor_list
from mlmd.deploy.load import load_model
from mlmd.engines.allocator import keep_freed_memory

keep_freed_memory()
torch.set_num_threads(1)
torch._C._set_graph_executor_optimize(False)
model_path = sys.argv[1] if len(sys.argv) > 1 else "inputs/water/water_model.pt"
grid = [int(x) for x in (sys.argv[2] if len(sys.argv) > 2 else "2 2 1").split()]
m, card = load_model(model_path)
dtype = getattr(torch, card.dtype)
atoms = ase.io.read("inputs/water/water_box_192.xyz").repeat((4, 4, 4))
rc = float(m.r_cut)
i, j, d = neighbor_list("ijD", atoms, rc)
n = len(atoms)
species = m.species_of(torch.tensor(atoms.numbers))

def mirrored(i, j, d, keep_pair):
    """edges as [pairs i<j (both in keep_pair), their reverses, the rest]"""
    sel = keep_pair & (i < j)
    rest = ~keep_pair
    ei = np.concatenate([i[sel], j[sel], i[rest]]); ej = np.concatenate([j[sel], i[sel], j[rest]])
    dd = np.concatenate([d[sel], -d[sel], d[rest]])
    return ei, ej, dd, int(sel.sum())

# one call, whole system
ei, ej, dd, nm = mirrored(i, j, d, np.ones(len(i), bool))
whole = (torch.tensor(np.stack([ei, ej])), torch.tensor(dd, dtype=dtype), nm)

def one_call():
    vec = whole[1].clone().requires_grad_(True)
    e = m.local_energies(species, whole[0], vec, n, whole[2])
    g, = torch.autograd.grad(e.sum(), [vec])
    return float(e.sum())

frac = atoms.get_scaled_positions() % 1.0
cell_idx = np.stack([np.minimum((frac[:, a] * grid[a]).astype(int), grid[a] - 1) for a in range(3)], 1)
owner = (cell_idx[:, 0] * grid[1] + cell_idx[:, 1]) * grid[2] + cell_idx[:, 2]
widths = m.layer_widths(0)
ranks = []
for p in range(int(np.prod(grid))):
    own = np.flatnonzero(owner == p)
    sel = owner[i] == p
    # ghost nodes: every (atom, image) reached from own atoms across a boundary; approximate images by atom index
    # plus the owner test (a neighbour owned here through a periodic image counts as a ghost only if its owner differs)
    ii, jj, dd_ = i[sel], j[sel], d[sel]
    local_pair = owner[jj] == p
    ghosts = np.unique(jj[~local_pair])
    nodes = np.concatenate([own, ghosts])
    node = -np.ones(n, np.int64); node[nodes] = np.arange(len(nodes))
    ei, ej, dd2, nm = mirrored(node[ii], node[jj], dd_, local_pair)
    ranks.append(dict(n_local=len(own), nodes=torch.tensor(nodes), ei=torch.tensor(np.stack([ei, ej])),
                      vec=torch.tensor(dd2, dtype=dtype), nm=nm, species=species[torch.tensor(nodes)]))

def layers_rank(r):
    vec = r["vec"].clone().requires_grad_(True)
    sh, radial = m.layer_edges(0, vec, r["nm"])
    sh_in, rad_in = sh.detach().requires_grad_(True), radial.detach().requires_grad_(True)
    x = m.layer_embed(0, r["species"])
    ins, outs = [], []
    nl = r["n_local"]
    for k in range(len(widths) - 1):
        if k > 0:
            x = torch.cat([outs[-1].detach(), torch.zeros(x.shape[0] - nl, widths[k], dtype=dtype)]).requires_grad_(True)
        ins.append(x)
        outs.append(m.layer_interaction(0, k, x, r["species"], r["ei"], sh_in, rad_in, r["nm"], nl))
    last = outs[-1].detach().requires_grad_(True)
    e = m.layer_readout(0, last, r["species"][:nl])
    gy, = torch.autograd.grad(e.sum(), [last])
    gsh, grad = torch.zeros_like(sh_in), torch.zeros_like(rad_in)
    for k in reversed(range(len(widths) - 1)):
        wrt = [sh_in, rad_in] + ([ins[k]] if k > 0 else [])
        gs = torch.autograd.grad([outs[k]], wrt, [gy], allow_unused=True)
        gsh = gsh + gs[0]; grad = grad + gs[1]
        if k > 0:
            gy = gs[2][:nl]
    gv, = torch.autograd.grad([sh, radial], [vec], [gsh, grad])
    return float(e.sum())

split_ranks = []
for p in range(int(np.prod(grid))):
    own = np.flatnonzero(owner == p)
    fwd = i < j
    mine = fwd & (owner[np.minimum(i, j)] == p) & ((owner[i] == p) | (owner[j] == p))
    pi, pj, pd = i[mine], j[mine], d[mine]
    others = np.concatenate([pi[owner[pi] != p], pj[owner[pj] != p]])
    ghosts = np.setdiff1d(np.unique(others), own)
    # ghost nodes that only send (features needed): neighbours of own atoms through pairs computed elsewhere are not needed
    nodes = np.concatenate([own, ghosts])
    node = -np.ones(n, np.int64); node[nodes] = np.arange(len(nodes))
    ei = np.stack([np.concatenate([node[pi], node[pj]]), np.concatenate([node[pj], node[pi]])])
    split_ranks.append(dict(n_local=len(own), nodes=torch.tensor(nodes), ei=torch.tensor(ei),
                            vec=torch.tensor(np.concatenate([pd, -pd]), dtype=dtype), nm=len(pi),
                            species=species[torch.tensor(nodes)]))
mw = m.layer_message_widths(0)

def split_rank(r):
    vec = r["vec"].clone().requires_grad_(True)
    sh, radial = m.layer_edges(0, vec, r["nm"])
    sh_in, rad_in = sh.detach().requires_grad_(True), radial.detach().requires_grad_(True)
    x = m.layer_embed(0, r["species"])
    nl = r["n_local"]; nn_ = x.shape[0]
    ins, msgs, aggs, outs = [], [], [], []
    for k in range(len(widths) - 1):
        x = (x if k == 0 else torch.cat([outs[-1].detach(), torch.zeros(nn_ - nl, widths[k], dtype=dtype)])).detach().requires_grad_(True)
        ins.append(x)
        msg = m.layer_messages(0, k, x, r["ei"], sh_in, rad_in, r["nm"], nn_)
        msgs.append(msg)
        a = msg[:nl].detach().clone().requires_grad_(True)
        aggs.append(a)
        outs.append(m.layer_update(0, k, x[:nl], a, r["species"][:nl]))
    last = outs[-1].detach().requires_grad_(True)
    e = m.layer_readout(0, last, r["species"][:nl])
    gy, = torch.autograd.grad(e.sum(), [last])
    gsh, grad = torch.zeros_like(sh_in), torch.zeros_like(rad_in)
    for k in reversed(range(len(widths) - 1)):
        gx, ga = torch.autograd.grad([outs[k]], [ins[k], aggs[k]], [gy])
        gm = torch.cat([ga, torch.zeros(nn_ - nl, mw[k], dtype=dtype)])
        gs = torch.autograd.grad([msgs[k]], [sh_in, rad_in, ins[k]], [gm])
        gsh = gsh + gs[0]; grad = grad + gs[1]
        gy = (gx + gs[2])[:nl]
    gv, = torch.autograd.grad([sh, radial], [vec], [gsh, grad])
    return float(e.sum())

def cpu(f, reps=3):
    best = 1e9
    for _ in range(reps):
        t = time.process_time(); f(); best = min(best, time.process_time() - t)
    return best

for _ in range(2):
    one_call(); [layers_rank(r) for r in ranks]; [split_rank(r) for r in split_ranks]
ts = [cpu(lambda r=r: split_rank(r)) for r in split_ranks]
print(f"split: summed {sum(ts):.3f} s; edges per rank {split_ranks[0]['ei'].shape[1]}, ghosts {len(split_ranks[0]['nodes']) - split_ranks[0]['n_local']}")
t1 = cpu(one_call)
tl = [cpu(lambda r=r: layers_rank(r)) for r in ranks]
print(f"split efficiency {t1/sum(ts)*100:.0f}%")
print(f"atoms {n}, grid {grid}: one call {t1:.3f} s; layers summed {sum(tl):.3f} s ({t1/sum(tl)*100:.0f}% efficiency); "
      f"per rank local/ghost nodes " + ", ".join(f"{r['n_local']}/{len(r['nodes'])-r['n_local']}" for r in ranks[:2])
      + f"; edges per rank {ranks[0]['ei'].shape[1]}, mirrored pairs {ranks[0]['nm']}; whole: edges {whole[0].shape[1]}, pairs {whole[2]}")

if "--profile" in sys.argv:
    from torch.profiler import profile, ProfilerActivity
    def table(f):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            f()
        out = {}
        for ev in prof.key_averages():
            out[ev.key] = ev.self_cpu_time_total / 1e6
        return out
    a = table(one_call)
    b = table(lambda: [layers_rank(r) for r in ranks])
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        layers_rank(ranks[0])
    for ev in prof.key_averages(group_by_input_shape=True):
        if ev.key in ("aten::cat", "aten::bmm", "aten::mm") and ev.self_cpu_time_total > 2000:
            print(ev.key, ev.count, round(ev.self_cpu_time_total / 1e3, 1), "ms", str(ev.input_shapes)[:150])
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        one_call()
    print("one call:")
    for ev in prof.key_averages(group_by_input_shape=True):
        if ev.key in ("aten::cat", "aten::bmm", "aten::mm") and ev.self_cpu_time_total > 5000:
            print(ev.key, ev.count, round(ev.self_cpu_time_total / 1e3, 1), "ms", str(ev.input_shapes)[:150])
    keys = sorted(set(a) | set(b), key=lambda k: -(b.get(k, 0) - a.get(k, 0)))
    print(f"{'op':40s} {'one call':>9s} {'layers':>9s} {'diff':>8s}")
    for k in keys[:25]:
        print(f"{k[:40]:40s} {a.get(k,0):9.4f} {b.get(k,0):9.4f} {b.get(k,0)-a.get(k,0):8.4f}")
    print("total", sum(a.values()), sum(b.values()))
