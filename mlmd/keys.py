"""Names of every tensor and metadata field that crosses a module boundary (one place, no scattered literals)."""

from typing import Final

# graph / batch tensors
POSITIONS: Final = "positions"
CELL: Final = "cell"
PBC: Final = "pbc"
NUMBERS: Final = "numbers"  # atomic numbers
SPECIES: Final = "species"  # index into the model's species list
EDGE_INDEX: Final = "edge_index"  # [2, E]: row 0 = centre i, row 1 = neighbour j
EDGE_SHIFTS: Final = "edge_shifts"  # integer cell shifts S, r_ij = r_j - r_i + S @ cell
BATCH: Final = "batch"  # structure index of each atom
N_ATOMS: Final = "n_atoms"

# targets / predictions
ENERGY: Final = "energy"
ATOMIC_ENERGIES: Final = "atomic_energies"
FORCES: Final = "forces"
STRESS: Final = "stress"  # 3x3, eV/Å^3, ASE sign convention (positive under tension)
VIRIAL: Final = "virial"
CHARGES: Final = "charges"  # per-atom charges (e)
TOTAL_CHARGE: Final = "total_charge"  # per-structure total charge (e)

# metadata of a packaged model (extra files in the TorchScript archive)
META_FILE: Final = "mlmd_metadata.json"
