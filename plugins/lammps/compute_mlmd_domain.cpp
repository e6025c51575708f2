/* compute mlmd/domain: see compute_mlmd_domain.h. No torch headers: the measure is the pair style's. */

#include "compute_mlmd_domain.h"

#include "error.h"
#include "force.h"
#include "pair_mlmd.h"
#include "update.h"

#include <algorithm>

using namespace LAMMPS_NS;

ComputeMLMDDomain::ComputeMLMDDomain(LAMMPS *lmp, int narg, char **arg) : Compute(lmp, narg, arg), pair(nullptr)
{
  if (narg != 3)
    error->all(FLERR, "Illegal compute mlmd/domain command: expected 'compute ID group mlmd/domain', got {} "
                      "argument(s) after the style", narg - 3);
  scalar_flag = 1;
  extscalar = 0;
  vector_flag = 1;
  size_vector = 3;
  extvector = 0;
  for (double &v : values) v = 0.0;
  vector = values;
}

ComputeMLMDDomain::~ComputeMLMDDomain() = default;

void ComputeMLMDDomain::init()
{
  pair = dynamic_cast<PairMLMD *>(force->pair_match("mlmd", 1, 0));
  if (pair == nullptr)
    error->all(FLERR, "compute mlmd/domain requires pair_style mlmd (alone or once under hybrid/overlay)");
  if (!pair->has_training_domain())
    error->all(FLERR,
               "compute mlmd/domain: the model card of {} records no training domain (packaged before mlmd recorded "
               "it, or without its training data): package its checkpoint again with this mlmd (mlmd package "
               "CHECKPOINT -o NEW.pt)",
               pair->model_file());
}

void ComputeMLMDDomain::evaluate()
{
  if (!pair->graph_is_current())
    error->all(FLERR,
               "compute mlmd/domain: pair_style mlmd has not computed forces on step {}: the compute can only be "
               "used on steps on which forces were computed",
               update->ntimestep);
  const double *v = pair->domain_values();
  for (int k = 0; k < 3; k++) values[k] = v[k];
}

double ComputeMLMDDomain::compute_scalar()
{
  invoked_scalar = update->ntimestep;
  evaluate();
  scalar = std::max(0.0, std::max(values[0], values[1]) - 1.0);
  return scalar;
}

void ComputeMLMDDomain::compute_vector()
{
  invoked_vector = update->ntimestep;
  evaluate();
}
