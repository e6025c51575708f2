"""Input lines for a model: the card as LAMMPS reads it, `pair_style`/`pair_coeff` (with the long-range
hybrid/overlay, kspace and charge lines), the D3 functional names, and a whole input (``lammps_input``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlmd.engines.lammps.data import _num

if TYPE_CHECKING:
    from mlmd.deploy.card import DispersionCard, ModelCard


def _quote(path: str | Path) -> str:
    s = str(path)
    return f'"{s}"' if any(c.isspace() for c in s) else s


def model_card(model: str | Path) -> ModelCard:
    """The model's card (mlmd.deploy.load.read_card: from the archive's zip directory, no torch load, when the
    card lists its entry points); a file that is not a readable mlmd archive gets load's clear error."""
    from mlmd.deploy.load import read_card

    return read_card(model)


def model_elements(model: str | Path) -> list[str]:
    return list(model_card(model).elements)


def n_members(model: str | Path) -> int:
    """Committee size (1 for a single model; cards written before committees lack the field)."""
    return model_card(model).n_members


# LAMMPS's `pair_style dispersion/d3 bj NAME` knows these of mlmd's D3(BJ) functionals (mlmd name -> LAMMPS
# name), with the same s6/s8/a1/a2: measured on a 27-water box (9 Å cutoffs), all 14 agree with
# mlmd.model.dispersion to 1.0-1.07e-6 relative (LAMMPS's older bohr/hartree constants), which also shows
# that LAMMPS computes the two-body sum only (no ATM term). It takes no custom damping parameters: scan,
# r2scan and gfn2 are refused with "Functional ... not supported with bj damping function".
LAMMPS_D3BJ_FUNCTIONALS = {
    "pbe": "pbe", "pbe0": "pbe0", "revpbe": "revpbe", "revpbe0": "revpbe0", "pbesol": "pbesol",
    "b3lyp": "b3-lyp", "blyp": "b-lyp", "bp": "b-p", "bp86": "b-p", "tpss": "tpss", "tpssh": "tpssh",
    "b97d": "b97-d", "pw6b95": "pw6b95", "hse06": "hse06", "b2plyp": "b2-plyp",
}
# neighbour-list page sizes for the long D3 cutoffs: atoms within (cutoff + skin) at this number density (Å^-3),
# denser than any condensed phase mlmd models (water 0.10, metals < 0.1)
_MAX_DENSITY = 0.2


def long_range_terms(card: ModelCard) -> dict[str, Any]:
    """The model's long-range sub-cards that are set (electrostatics, dispersion)."""
    return card.long_range.terms


# what a file packaged before the D3 graph entry can do instead of LAMMPS's dispersion/d3
_REPACKAGE = ("; or repackage it with this mlmd (mlmd package {model} -o NEW.pt): its own D3 then runs inside "
              "pair_style mlmd, with any damping parameters, the smooth cutoff and the tail correction")


def _d3_functional(disp: DispersionCard, model: str | Path) -> str:
    """LAMMPS's name for the model's D3(BJ) functional, or a clear error naming what LAMMPS lacks (files packaged
    before the D3 graph entry: the others run the model's own D3 inside pair_style mlmd)."""
    try:
        return _dispersion_d3_name(disp, model)
    except ValueError as err:
        if disp.three_body or disp.s9 != 0.0:
            raise
        raise ValueError(str(err) + _REPACKAGE.format(model=model)) from None


def _dispersion_d3_name(disp: DispersionCard, model: str | Path) -> str:
    from mlmd.model.d3_parameters import damping_parameters

    name = disp.functional
    key = name.lower().replace("-", "").replace("_", "")
    if disp.kind != "d3bj":
        raise ValueError(f"model {model}: dispersion kind {disp.kind!r} has no LAMMPS equivalent (d3bj only)")
    if disp.three_body or disp.s9 != 0.0:
        raise ValueError(
            f"model {model} has a D3 three-body (ATM) term, which LAMMPS's pair_style dispersion/d3 (two-body "
            "sum only) does not compute, and the file predates pair_style mlmd's own ATM entry: repackage it with "
            f"this mlmd (mlmd package {model} -o NEW.pt) and its D3, ATM included, runs inside pair_style mlmd"
        )
    if disp.smooth_width > 0.0 or disp.tail_correction:
        raise ValueError(
            f"model {model} uses D3(BJ) with a smooth cutoff (width {disp.smooth_width} Å) or the mean-field "
            "tail correction, which LAMMPS's pair_style dispersion/d3 (sharp cutoffs, no tail) does not compute: "
            "run it in ASE or OpenMM (dispersion inside the model), or package it with sharp D3 cutoffs and no "
            "tail (model.long_range.d3_smooth_width: 0, d3_tail_correction: false) for LAMMPS"
        )
    if key not in LAMMPS_D3BJ_FUNCTIONALS:
        raise ValueError(
            f"model {model} uses D3(BJ) with the damping parameters of {name!r} (s6 {disp.s6}, s8 "
            f"{disp.s8}, a1 {disp.a1}, a2 {disp.a2} bohr), but LAMMPS's pair_style "
            "dispersion/d3 takes only a functional name from its built-in table and no custom s6/s8/a1/a2, and "
            f"its table has no {name!r}; functionals it can run: {', '.join(sorted(LAMMPS_D3BJ_FUNCTIONALS))}"
        )
    ref = damping_parameters(key)
    own = {k: float(getattr(disp, k)) for k in ("s6", "s8", "a1", "a2")}
    changed = {k: v for k, v in own.items() if abs(v - ref[k]) > 1e-12}
    if changed:
        raise ValueError(
            f"model {model} uses D3(BJ) for {name!r} with modified damping parameters {changed} (standard: "
            f"{ {k: ref[k] for k in changed} }): LAMMPS's pair_style dispersion/d3 takes no custom parameters"
        )
    return LAMMPS_D3BJ_FUNCTIONALS[key]


def charges_of(card: ModelCard, model: str | Path = "") -> dict[str, float] | None:
    """Per-element charges {symbol: q} for the data file of a model with electrostatics (None without): the fixed
    ones, or zeros for predicted charges, which pair_style mlmd computes and writes to the atoms every step. A clear
    error for a predicted-charge file packaged before the local_charges entry, which LAMMPS cannot run."""
    from ase.data import chemical_symbols

    if not card.has_electrostatics:
        return None
    if card.has_local_charges:
        return {e: 0.0 for e in card.elements}
    if card.predicts_charges:
        raise ValueError(
            f"model {model} predicts its charges but was packaged without the local_charges entry that pair_style "
            f"mlmd needs for them: repackage it with this mlmd (mlmd package {model} -o NEW.pt), or run it in ASE "
            "(mlmd.engines.ase.MLMDCalculator) or OpenMM (MLMDPotential, electrostatics='model')"
        )
    return {chemical_symbols[z]: q for z, q in card.fixed_charges.items()}


def pair_lines(
    model: str | Path,
    elements: Sequence[str] | None = None,
    natoms: int | None = None,
    periodic: bool = True,
    coulomb_cutoff: float | None = None,
    structure: Any = None,
) -> list[str]:
    """The LAMMPS lines (after the box is made) that run a model: `pair_style mlmd MODEL` and
    `pair_coeff * * E1 E2 ...` (types in the order of `elements`, NULL allowed) for a short-range model.

    A model with long-range terms gets `pair_style hybrid/overlay mlmd MODEL coul/long R [dispersion/d3 ...]`,
    `kspace_style ewald|pppm <accuracy>` with the model's splitting (`kspace_modify gewald`), real-space cutoff
    and accuracy, `pair_modify table 16`, and per-type charges (`set type N charge q`; the box needs
    `atom_style charge`). Ewald when the model's method is "ewald", or "auto" with natoms at most its
    ewald_max_atoms; PPPM otherwise. Non-periodic systems (periodic=False) get the direct Coulomb sum,
    `coul/cut coulomb_cutoff` (give a cutoff larger than the system). D3(BJ) goes to LAMMPS's
    `pair_style dispersion/d3` when its table has the functional (see LAMMPS_D3BJ_FUNCTIONALS) -- for files
    packaged before the D3 graph entry; a model whose card has it (card.has_local_dispersion) computes its own D3
    inside pair_style mlmd (any damping parameters, smooth cutoff, tail correction): no dispersion/d3 style, and
    plain `pair_style mlmd` when it has no electrostatics.

    ``structure`` (ASE Atoms, periodic): the Ewald parameters are chosen for its own charges and cell, as
    ``tune_electrostatics`` does in ASE and OpenMM: for fixed charges `kspace_modify gewald` is the splitting that
    meets the accuracy at the model's real-space cutoff for these charges (LAMMPS then sizes its k-space from the
    accuracy and the actual charges itself); a predicted-charge model gets `ewald tune` (pair_style mlmd tunes to
    the charges it predicts at the first step). Without it the model's own parameters, whose accuracy pair_style
    mlmd (predicted charges) checks once per run.
    """
    card = model_card(model)
    known = list(card.elements)
    names = list(elements) if elements else known
    unknown = [e for e in names if e != "NULL" and e not in known]
    if unknown:
        raise ValueError(f"element(s) {' '.join(unknown)} not in model {model} (it knows: {' '.join(known)})")
    path = _quote(Path(model).resolve())
    terms = long_range_terms(card)
    disp = card.long_range.dispersion
    # D3 inside pair_style mlmd (the model's own, any parameters): no dispersion/d3 style, but the neighbour
    # list reaches the D3 cutoffs
    d3_inside = card.has_local_dispersion
    if card.has_local_charges:
        return _predicted_charge_lines(card, model, path, names, periodic, d3_inside, structure is not None)
    if not terms or (d3_inside and card.long_range.electrostatics is None):
        lines = [f"pair_style mlmd {path}", "pair_coeff * * " + " ".join(names)]
        if d3_inside and disp is not None:
            lines.append(_neigh_one([card.interaction_range, disp.cutoff, disp.cutoff_cn]))
        return lines
    styles = [f"mlmd {path}"]
    coeffs = ["pair_coeff * * mlmd " + " ".join(names)]
    after: list[str] = []
    cutoffs = [card.interaction_range]
    charges = charges_of(card, model)
    elec = card.long_range.electrostatics
    if charges is not None and elec is not None:
        missing = [e for e in names if e != "NULL" and e not in charges]
        if missing:
            raise ValueError(f"model {model} gives no charge for {' '.join(missing)}")
        if periodic:
            if elec.r_cut is None or elec.alpha is None:
                raise ValueError(f"model {model}: its card gives no Ewald real-space cutoff and splitting (r_cut, "
                                 "alpha) for LAMMPS's coul/long + kspace")
            r_cut = elec.r_cut
            method = elec.method
            if method == "auto":
                small = natoms is not None and natoms <= elec.ewald_max_atoms
                method = "ewald" if small else "pme"
            kspace = {"ewald": "ewald", "pme": "pppm"}.get(method)
            if kspace is None:
                raise ValueError(f"model {model}: electrostatics method {method!r} has no LAMMPS kspace style")
            styles.append(f"coul/long {_num(r_cut)}")
            coeffs.append("pair_coeff * * coul/long")
            tuned = None if structure is None else _structure_parameters(card, elec, structure, r_cut)
            alpha = elec.alpha if tuned is None else tuned["alpha"]
            after += [
                f"kspace_style    {kspace} {_num(elec.accuracy)}",
                f"kspace_modify   gewald {_num(alpha)}",
                *([] if tuned is None or kspace != "ewald" else [_kmax_line(tuned, structure)]),
                "pair_modify     pair coul/long table 16",
            ]
        else:
            if coulomb_cutoff is None:
                raise ValueError("a non-periodic system with electrostatics needs coulomb_cutoff (> its diameter)")
            r_cut = float(coulomb_cutoff)
            styles.append(f"coul/cut {_num(r_cut)}")
            coeffs.append("pair_coeff * * coul/cut")
        cutoffs.append(r_cut)
        for t, name in enumerate(names, start=1):
            if name != "NULL":
                after.append(f"set             type {t} charge {_num(charges[name])}  # {name}")
    if disp is not None:
        cutoffs += [disp.cutoff, disp.cutoff_cn]
        if not d3_inside:
            functional = _d3_functional(disp, model)
            styles.append(f"dispersion/d3 bj {functional} {_num(disp.cutoff)} {_num(disp.cutoff_cn)}")
            coeffs.append("pair_coeff * * dispersion/d3 " + " ".join(names))
    after.append(_neigh_one(cutoffs))
    return ["pair_style hybrid/overlay " + " ".join(styles), *coeffs, *after]


def _structure_parameters(card: ModelCard, elec: Any, structure: Any, r_cut: float) -> dict[str, Any]:
    """Ewald parameters for this structure's own fixed charges and cell at the real-space cutoff r_cut (what
    Electrostatics.tune chooses)."""
    import numpy as np

    from mlmd.ewald_params import choose_parameters

    q = np.array([card.fixed_charges[int(z)] for z in structure.numbers], dtype=float)
    return choose_parameters(elec.accuracy, r_cut=r_cut, charges=q, cell=np.asarray(structure.cell.array))


def _kmax_line(params: dict[str, Any], structure: Any) -> str:
    """`kspace_modify kmax/ewald` with the k-vectors the model sums along each lattice vector (LAMMPS then sums at
    least the model's k-sphere). LAMMPS's own choice from the accuracy met the force target on ZnO-like charges but
    put the energy 1.3e-6 (relative) from the converged sum, against 4e-8 for the model's and 9e-8 with this line."""
    import numpy as np

    from mlmd.ewald_params import ewald_kvector_counts

    lengths = np.linalg.norm(np.asarray(structure.cell.array), axis=1)
    counts = [ewald_kvector_counts(float(length), float(params["k_cutoff"])) for length in lengths]
    return "kspace_modify   kmax/ewald " + " ".join(str(n) for n in counts)


def _predicted_charge_lines(
    card: ModelCard, model: str | Path, path: str, names: list[str], periodic: bool, d3_inside: bool,
    tune: bool = False,
) -> list[str]:
    """A predicted-charge model: pair_style mlmd predicts the charges and sums their Ewald energy itself (no
    kspace_style, no coul style); the neighbour list reaches the Ewald cutoff (and D3's, inside too). ``tune``:
    `ewald tune` (parameters chosen for the charges of the first step)."""
    elec = card.long_range.electrostatics
    disp = card.long_range.dispersion
    if not periodic:
        raise ValueError(f"model {model} predicts its charges: pair_style mlmd sums their Ewald energy in boxes "
                         "periodic in x, y and z only; run clusters in ASE or OpenMM")
    if disp is not None and not d3_inside:
        raise ValueError(f"model {model}: predicted charges with D3 need the model's own D3 inside pair_style mlmd "
                         "(the local_dispersion entries; not the three-body term)")
    reach = [card.interaction_range + card.r_cut, float(elec.r_cut or 0.0) if elec else 0.0]
    if disp is not None:
        reach += [disp.cutoff, disp.cutoff_cn]
    keyword = " ewald tune" if tune else ""
    return [f"pair_style mlmd {path}{keyword}", "pair_coeff * * " + " ".join(names), _neigh_one(reach)]


def _neigh_one(cutoffs: list[float]) -> str:
    """neigh_modify one/page sized for the longest cutoff (plus a 2 Å skin) at _MAX_DENSITY."""
    reach = max(cutoffs) + 2.0
    one = max(2000, int(_MAX_DENSITY * 4.0 / 3.0 * 3.141592653589793 * reach**3))
    return f"neigh_modify    one {one} page {20 * one}"


def atom_style(model: str | Path) -> str:
    """`charge` for a model with electrostatics (LAMMPS holds the charges), else `atomic`."""
    return "charge" if model_card(model).has_electrostatics else "atomic"


def lammps_input(
    model: str | Path, elements: Sequence[str] | None = None, natoms: int | None = None, structure: Any = None
) -> str:
    """The lines a LAMMPS input needs for a model: settings before the box, pair lines and masses after it.

    For a long-range model (see pair_lines) natoms picks Ewald (small cells) or PPPM as the model does, and a
    periodic ``structure`` (ASE Atoms) gets Ewald parameters chosen for its own charges and cell.
    """
    from ase.data import atomic_masses, atomic_numbers

    card = model_card(model)
    lines = pair_lines(model, elements, natoms=natoms, structure=structure)
    names = list(elements) if elements else list(card.elements)
    style = atom_style(model)
    head = [
        f"# mlmd model {Path(model).name}: elements {' '.join(card.elements)}, r_cut {card.r_cut} Å, "
        f"{card.n_layers} layers, {card.dtype}",
        "# exact on any number of MPI ranks: on several, ranks exchange ghost features between layers (ghosts to "
        f"r_cut {card.r_cut} Å + skin; see `parallel` in the README)",
        "# before the box is made (read_data / create_box):",
        "units           metal",
        f"atom_style      {style}",
        "newton          on",
        f"# after it (atom types 1..{len(names)} = {' '.join(names)}):",
        *lines,
    ]
    for t, name in enumerate(names, start=1):
        if name != "NULL":
            head.append(f"mass            {t} {atomic_masses[atomic_numbers[name]]:.6g}  # {name}")
    if card.is_committee:
        head += [
            f"# a committee of {card.n_members} models: its spread during the run (compute mlmd/uncertainty):",
            "# compute         unc all mlmd/uncertainty   # c_unc[1] energy std (eV), c_unc[2] max force std (eV/Å)",
            "# thermo_style    custom step temp pe c_unc[1] c_unc[2]",
        ]
    disp = card.long_range.dispersion
    if disp is not None and card.has_local_dispersion:
        atm = ""
        if disp.three_body:
            atm = f", three-body (ATM) term to {disp.details.get('cutoff_three_body', 0.0):.4g} Å"
        head.insert(3, f"# D3 dispersion: pair_style mlmd computes the model's own D3 (cutoff {disp.cutoff} Å, CN "
                    f"cutoff {disp.cutoff_cn} Å{atm})")
    if style == "charge" and card.has_local_charges:
        head.insert(3, "# predicted charges: pair_style mlmd computes them every step (written to the atoms' q) and "
                    "sums their Ewald energy itself (no kspace_style); on several ranks ghosts reach (n_layers + 1) "
                    f"x r_cut = {card.interaction_range + card.r_cut:g} Å + skin")
    elif style == "charge":
        inside = disp is not None and card.has_local_dispersion
        mine = "the short-range energy and D3" if inside else "the short-range energy"
        extra = "" if disp is None or inside else " (and dispersion/d3)"
        head.insert(3, f"# long-range terms: pair_style mlmd gives {mine}, coul/long + kspace{extra} the rest, with "
                    "the model's charges, splitting, cutoffs and accuracy")
    return "\n".join(head) + "\n"
