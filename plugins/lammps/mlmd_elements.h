/* Chemical elements for pair_style mlmd: symbols and standard atomic weights for Z = 1..118, so that the mass
   LAMMPS gives each atom type can be checked against the element pair_coeff gives it. No LAMMPS or torch
   headers. */

#ifndef MLMD_ELEMENTS_H
#define MLMD_ELEMENTS_H

#include <string>
#include <vector>

namespace mlmd {

constexpr int MAX_ATOMIC_NUMBER = 118;

int atomic_number(const std::string &symbol);    // 0 when the symbol is not an element (case matters: "Cu")
const char *element_symbol(int z);                 // "?" outside 1..118
double standard_atomic_weight(int z);              // u; 0 outside 1..118

// How far a LAMMPS mass may be from the element's standard atomic weight: the larger of 0.5 u and 5%. That
// tells neighbouring light elements apart (H/He, C/N/O) and catches swapped types; isotopes (D, 2.014 u) and
// repartitioned hydrogen masses are outside it on purpose (pair_style mlmd ... check_masses no).
double mass_tolerance(int z);
bool mass_matches(double mass, int z);

// the element of those given (atomic numbers; all elements when empty) whose standard weight is closest to mass
int element_for_mass(double mass, const std::vector<int> &candidates = {});

}    // namespace mlmd

#endif
