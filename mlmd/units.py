"""Physical constants and unit conversions: the one place that defines them (CODATA 2018)."""

from typing import Final

EV_TO_KJ_PER_MOL: Final = 96.48533212331002  # 1 eV in kJ/mol
ANGSTROM_TO_NM: Final = 0.1
NM_TO_ANGSTROM: Final = 10.0
EV_PER_A3_TO_GPA: Final = 160.21766208
EV_PER_A3_TO_BAR: Final = 1.602176634e6
BOHR_TO_ANGSTROM: Final = 0.529177210903
HARTREE_TO_EV: Final = 27.211386245988
# e^2 / (4 pi eps0) in eV Å
COULOMB_EV_A: Final = 14.399645478425668

# how a model card spells the units mlmd works in (one spelling everywhere, sub-cards included)
LENGTH_UNIT: Final = "angstrom"
ENERGY_UNIT: Final = "eV"
CHARGE_UNIT: Final = "e"
