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

# further outputs of a packaged model's entry points (see mlmd.deploy.packaged)
ENERGY_STD: Final = "energy_std"  # committee spread of the energy (eV)
FORCES_STD: Final = "forces_std"  # per-atom RMS deviation of the member force vectors (eV/Å)
ATOMIC_ENERGIES_STD: Final = "atomic_energies_std"
MEMBER_ENERGIES: Final = "member_energies"  # [K]
MEMBER_FORCES: Final = "member_forces"  # [K, N, 3]

# metadata of a packaged model (extra files in the TorchScript archive)
META_FILE: Final = "mlmd_metadata.json"

# entry points (TorchScript methods) a packaged model file may provide; its card lists those it has
ENTRY_FORWARD: Final = "forward"
ENTRY_COMPUTE: Final = "compute"
ENTRY_ATOMIC_ENERGIES: Final = "atomic_energies"
ENTRY_CHARGES: Final = "charges"
ENTRY_SPECIES_OF: Final = "species_of"
ENTRY_LOCAL_ENERGIES: Final = "local_energies"
ENTRY_LOCAL_MEMBER_ENERGIES: Final = "local_member_energies"
ENTRY_LOCAL_ENERGIES_OF_MEMBER: Final = "local_energies_of_member"
ENTRY_UNCERTAINTY: Final = "uncertainty"
ENTRY_ATOMIC_VARIANCES: Final = "atomic_variances"
ENTRY_LOCAL_DISPERSION: Final = "local_dispersion"
ENTRY_LOCAL_DISPERSION_TAIL: Final = "local_dispersion_tail"
ENTRY_LOCAL_DISPERSION_CN: Final = "local_dispersion_cn"
ENTRY_LOCAL_DISPERSION_GIVEN_CN: Final = "local_dispersion_given_cn"
ENTRY_LOCAL_DISPERSION_ATM: Final = "local_dispersion_atm"  # D3's three-body term on an engine's graph
# D3 given the CN with each pair across ranks on one rank (the ghost ends' halves returned for their owners)
ENTRY_LOCAL_DISPERSION_WHOLE_PAIRS: Final = "local_dispersion_whole_pairs"
# the same split with its derivatives as values (the engine chains them; no autograd graph)
ENTRY_LOCAL_DISPERSION_CN_SLOPES: Final = "local_dispersion_cn_slopes"
ENTRY_LOCAL_DISPERSION_BY_HAND: Final = "local_dispersion_by_hand"
ENTRY_LOCAL_CHARGES: Final = "local_charges"  # predicted charges on an engine's graph (LAMMPS)
# layer by layer (message-passing models): what pair_style mlmd's parallel layers mode calls
ENTRY_LAYER_WIDTHS: Final = "layer_widths"
ENTRY_LAYER_EMBED: Final = "layer_embed"
ENTRY_LAYER_EDGES: Final = "layer_edges"
ENTRY_LAYER_INTERACTION: Final = "layer_interaction"
ENTRY_LAYER_READOUT: Final = "layer_readout"
LAYER_ENTRY_POINTS: Final = (
    ENTRY_LAYER_WIDTHS, ENTRY_LAYER_EMBED, ENTRY_LAYER_EDGES, ENTRY_LAYER_INTERACTION, ENTRY_LAYER_READOUT,
)
# layer_interaction in two halves, so that each pair's messages are computed on one rank only: the summed
# messages of ghost atoms travel to their owners (older files have only layer_interaction)
ENTRY_LAYER_MESSAGE_WIDTHS: Final = "layer_message_widths"
ENTRY_LAYER_MESSAGES: Final = "layer_messages"
ENTRY_LAYER_UPDATE: Final = "layer_update"
SPLIT_LAYER_ENTRY_POINTS: Final = (ENTRY_LAYER_MESSAGE_WIDTHS, ENTRY_LAYER_MESSAGES, ENTRY_LAYER_UPDATE)
ENTRY_POINTS: Final = (
    ENTRY_FORWARD, ENTRY_COMPUTE, ENTRY_ATOMIC_ENERGIES, ENTRY_CHARGES, ENTRY_SPECIES_OF, ENTRY_LOCAL_ENERGIES,
    ENTRY_LOCAL_MEMBER_ENERGIES, ENTRY_LOCAL_ENERGIES_OF_MEMBER, ENTRY_UNCERTAINTY, ENTRY_ATOMIC_VARIANCES,
    ENTRY_LOCAL_DISPERSION, ENTRY_LOCAL_DISPERSION_TAIL, ENTRY_LOCAL_DISPERSION_CN, ENTRY_LOCAL_DISPERSION_GIVEN_CN,
    ENTRY_LOCAL_DISPERSION_ATM, ENTRY_LOCAL_CHARGES, *LAYER_ENTRY_POINTS, *SPLIT_LAYER_ENTRY_POINTS,
    ENTRY_LOCAL_DISPERSION_WHOLE_PAIRS, ENTRY_LOCAL_DISPERSION_CN_SLOPES, ENTRY_LOCAL_DISPERSION_BY_HAND,
)

# keys of the model card (mlmd.deploy.card.ModelCard; plugins/lammps reads several of them by these names)
CARD_FORMAT_VERSION: Final = "format_version"
CARD_MLMD_VERSION: Final = "mlmd_version"
CARD_CREATED: Final = "created"
CARD_MODEL_KIND: Final = "model_kind"
CARD_ELEMENTS: Final = "elements"
CARD_ATOMIC_NUMBERS: Final = "atomic_numbers"
CARD_R_CUT: Final = "r_cut"
CARD_N_LAYERS: Final = "n_layers"
CARD_INTERACTION_RANGE: Final = "interaction_range"
CARD_DTYPE: Final = "dtype"
CARD_UNITS: Final = "units"
CARD_N_MEMBERS: Final = "n_members"
CARD_LONG_RANGE: Final = "long_range"
CARD_CHARGES_MODE: Final = "charges_mode"
CARD_MIN_DISTANCE: Final = "min_distance"
CARD_ENTRY_POINTS: Final = "entry_points"
CARD_HPARAMS: Final = "hparams"
CARD_METRICS: Final = "metrics"
CARD_MEMBER_METRICS: Final = "member_metrics"
CARD_EPOCHS: Final = "epochs"
CARD_TRAINING_DATA_SHA256: Final = "training_data_sha256"
CARD_TRAINING_NUMBER_DENSITY: Final = "training_number_density"  # atoms/Å^3, median of the periodic training cells
CARD_TRAINING_DOMAIN: Final = "training_domain"  # what the training structures covered (mlmd.deploy.domain)
CARD_WEIGHTS_SHA256: Final = "weights_sha256"
CARD_COMPILED: Final = "compiled"  # a compiled copy beside the file (mlmd.deploy.compiled), absent if none
CARD_KEYS: Final = (
    CARD_FORMAT_VERSION, CARD_MLMD_VERSION, CARD_CREATED, CARD_MODEL_KIND, CARD_ELEMENTS, CARD_ATOMIC_NUMBERS,
    CARD_R_CUT, CARD_N_LAYERS, CARD_INTERACTION_RANGE, CARD_DTYPE, CARD_UNITS, CARD_N_MEMBERS, CARD_LONG_RANGE,
    CARD_CHARGES_MODE, CARD_MIN_DISTANCE, CARD_ENTRY_POINTS, CARD_HPARAMS, CARD_METRICS, CARD_MEMBER_METRICS,
    CARD_EPOCHS, CARD_TRAINING_DATA_SHA256, CARD_TRAINING_NUMBER_DENSITY, CARD_TRAINING_DOMAIN, CARD_WEIGHTS_SHA256,
    CARD_COMPILED,
)
# long_range sub-cards
LONG_RANGE_ELECTROSTATICS: Final = "electrostatics"
LONG_RANGE_DISPERSION: Final = "dispersion"
# charges_mode values and in-model electrostatics methods
CHARGES_NONE: Final = "none"
CHARGES_FIXED: Final = "fixed"
CHARGES_PREDICTED: Final = "predicted"
CHARGES_MODES: Final = (CHARGES_NONE, CHARGES_FIXED, CHARGES_PREDICTED)
ELECTROSTATICS_METHODS: Final = ("auto", "direct", "ewald", "pme")
PERIODIC_ELECTROSTATICS_METHODS: Final = ("ewald", "pme")  # need a lattice; "direct" needs none

# files of a training run (read by the trainer, the packager and the loaders' "this is a checkpoint" message)
CHECKPOINT_LAST: Final = "checkpoint_last.pt"  # every epoch: what a resumed run continues from
CHECKPOINT_BEST: Final = "checkpoint_best.pt"  # the lowest validation loss: what gets packaged
TEST_METRICS: Final = "test_metrics.json"  # written when a run has finished (its test-set errors)
ENSEMBLE_MANIFEST: Final = "ensemble.json"  # in an ensemble's folder: {"members": [member folder names], ...}
