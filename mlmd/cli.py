"""The `mlmd` command: train, package, validate, info, evaluate, md, learn, lammps-input, data generate."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# libgomp threads that busy-wait make torch 10-30x slower on a shared or oversubscribed CPU (measured here);
# set before torch is imported (it is imported lazily by the subcommands)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _train(args: argparse.Namespace) -> int:
    from mlmd.config import load_config
    from mlmd.train.ensemble import train_ensemble
    from mlmd.train.run_files import prepare_output_dir
    from mlmd.train.trainer import Trainer

    cfg = load_config(args.config, args.set)
    if args.output_dir:
        cfg.output_dir = args.output_dir
    if args.ensemble:
        cfg.train.ensemble = args.ensemble
    prepare_output_dir(cfg.output_dir, resume=args.resume, overwrite=args.overwrite)
    if cfg.train.ensemble > 1:
        train_ensemble(cfg, resume=args.resume, progress=not args.no_progress)
        print(f"{cfg.train.ensemble} members in {cfg.output_dir}/member_*; package them together with "
              f"`mlmd package {cfg.output_dir} -o model.pt`")
        return 0
    Trainer(cfg, resume=args.resume, progress=not args.no_progress).train()
    print(f"checkpoints, metrics.csv and learning_curve.png are in {cfg.output_dir}/")
    return 0


def _package(args: argparse.Namespace) -> int:
    from mlmd.deploy.export import is_packaged_model, package_checkpoint, repackage
    from mlmd.deploy.load import describe, load_model

    if is_packaged_model(args.checkpoint):
        from mlmd.model.checkpoint import non_finite_weights

        module, _ = load_model(args.checkpoint)
        bad = non_finite_weights(module)
        if bad:
            raise ValueError(f"model {args.checkpoint} has non-finite (NaN or infinite) weights "
                             f"({', '.join(bad[:3])}): refusing to package it")
        repackage(args.checkpoint, args.output, compile=args.compile, training_data=args.training_data or (),
                  compile_threads=args.compile_threads)
    else:
        if args.training_data:
            raise ValueError("--training-data is for a packaged model file: a checkpoint names its training data")
        package_checkpoint(Path(args.checkpoint), args.output, compile=args.compile,
                           compile_threads=args.compile_threads)
    _, card = load_model(args.output)
    print(f"wrote {args.output}\n{describe(card)}")
    if args.no_validate:
        return 0
    from mlmd.validate import validate

    report = validate(args.output)
    print(report.table())
    return 0 if report.passed else 1


def _validate(args: argparse.Namespace) -> int:
    from mlmd.validate import validate

    report = validate(args.model, nprocs=args.nprocs, engine_names=args.engines, tolerance=args.tolerance,
                      structures=args.structure, builtin=not args.no_builtin,
                      tune_electrostatics=args.tune_electrostatics)
    print(report.table())
    return 0 if report.passed else 1


def _info(args: argparse.Namespace) -> int:
    from mlmd.deploy.load import describe, load_model

    _, card = load_model(args.model, verify=True)
    print(card.to_json() if args.json else describe(card))
    print("weights checksum verified")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from mlmd.evaluate import evaluate_model_file, format_table

    plot = args.plot or str(Path(args.data).with_suffix("").name + "_parity.png")
    res = evaluate_model_file(args.model, args.data, args.energy_key, args.forces_key, args.stress_key, plot)
    print(format_table(res))
    print(f"parity plot: {plot}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


def _md(args: argparse.Namespace) -> int:
    from mlmd.md import MDRequest, run

    uncertainty = None
    if args.uncertainty_threshold is not None or args.harvest or args.uncertainty_log:
        uncertainty = {
            "threshold": float("inf") if args.uncertainty_threshold is None else args.uncertainty_threshold,
            "harvest": args.harvest, "stop": args.stop_on_uncertain, "log": args.uncertainty_log,
        }
    run(MDRequest(
        model=args.model,
        engine=args.engine,
        structure=args.structure,
        steps=args.steps,
        temperature=args.temperature,
        timestep_fs=args.timestep,
        replicate=args.replicate,
        log_every=args.log_every,
        trajectory=args.trajectory,
        ensemble=args.ensemble,
        nprocs=args.nprocs,
        threads=args.threads,
        uncertainty=uncertainty,
        output_dir=args.output_dir,
        domain=args.domain,
    ))
    return 0


def _lammps_input(args: argparse.Namespace) -> int:
    from mlmd.engines.lammps import charges_of, lammps_input, model_card, model_elements, write_data

    atoms = None
    if args.structure:
        import ase.io

        atoms = ase.io.read(args.structure).repeat(tuple(args.replicate))
    periodic = atoms is not None and bool(atoms.pbc.all())
    # the structure's own charges and cell choose the Ewald parameters (as tune_electrostatics in ASE and OpenMM)
    print(lammps_input(args.model, args.elements, natoms=None if atoms is None else len(atoms),
                       structure=atoms if periodic else None), end="")
    if atoms is not None:
        names = args.elements or model_elements(args.model)
        write_data(atoms, args.data, names, charges_of(model_card(args.model), args.model))
        print(f"# wrote {args.data}: {len(atoms)} atoms, atom types {' '.join(names)} (read_data {args.data})")
    return 0


def _learn(args: argparse.Namespace) -> int:
    from mlmd.learn import load_learn_config, run_learn

    cfg = load_learn_config(args.config, args.set)
    rows = run_learn(cfg, progress=not args.no_progress, resume=args.resume)
    print(f"{len(rows)} rounds; table {cfg.output_dir}/learn.csv, plot {cfg.output_dir}/learn.png")
    return 0


def _data_generate(args: argparse.Namespace) -> int:
    from mlmd.data.generate import generate_water

    generate_water(args.output, method=args.method, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlmd", description="Train and serve equivariant interatomic potentials.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a YAML config")
    t.add_argument("config")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.epochs=5")
    t.add_argument("--resume", action="store_true", help="continue from output_dir/checkpoint_last.pt")
    t.add_argument("--overwrite", action="store_true",
                   help="delete a previous run's files in output_dir (checkpoints, metrics, plots) and start again")
    t.add_argument("--output-dir", default=None)
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--ensemble", type=int, default=0, metavar="K",
                   help="train K members with different seeds (a committee: uncertainty in every engine)")
    t.set_defaults(func=_train)

    k = sub.add_parser("package", help="compile a checkpoint into one TorchScript model file")
    k.add_argument("checkpoint", help="checkpoint file or training output folder (an ensemble's: all members); "
                   "or a model file, compiled again with this mlmd (same weights)")
    k.add_argument("-o", "--output", required=True)
    k.add_argument("--compile", choices=["aoti"], default=None,
                   help="also write an AOTInductor copy (OUTPUT's name, .aoti.pt2) that the ASE calculator runs "
                   "instead of the TorchScript file (1.7-2.2x less CPU per step on one thread); takes a minute or two")
    k.add_argument("--compile-threads", type=int, default=1, metavar="N",
                   help="with --compile: parallelise the compiled program's loops for N threads (default 1: none); "
                   "run it with --threads N (or OMP_NUM_THREADS=N)")
    k.add_argument("--training-data", nargs="+", default=None, metavar="FILE",
                   help="with a model file: the file(s) it was trained on (data.path [data.extra_train_path], checked "
                   "against the card's checksum), to add the training-domain record to a file packaged without it")
    k.add_argument("--no-validate", action="store_true",
                   help="skip `mlmd validate` of the written file (ASE vs OpenMM vs LAMMPS)")
    k.set_defaults(func=_package)

    v = sub.add_parser("validate", help="same energies, forces, stress in ASE, OpenMM and LAMMPS? (exit 1 if not)")
    v.add_argument("model")
    v.add_argument("--nprocs", type=int, nargs="+", default=[1, 2, 4],
                   help="LAMMPS MPI rank counts (several: parallel layers)")
    v.add_argument("--engines", nargs="+", default=None, choices=["openmm", "lammps"],
                   help="engines compared with ASE (default: all)")
    v.add_argument("--tune-electrostatics", action="store_true",
                   help="every engine chooses the Ewald/PME parameters for each structure's own charges and cell")
    v.add_argument("--tolerance", type=float, default=None,
                   help="one relative tolerance for everything (default: from the model's dtype and long range)")
    v.add_argument("--structure", action="append", default=[], metavar="FILE[@INDEX]",
                   help="also check your structures: any file ase.io.read reads, all its frames or FILE@INDEX "
                   "(0, -1, 2:10, ::5); repeat the option for more files. Small periodic cells are replicated "
                   "to twice the cutoff (OpenMM's minimum image)")
    v.add_argument("--no-builtin", action="store_true",
                   help="check only the --structure files (not the built-in boxes and cluster)")
    v.set_defaults(func=_validate)

    i = sub.add_parser("info", help="print a model file's card and verify its checksum")
    i.add_argument("model")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=_info)

    e = sub.add_parser("evaluate", help="errors of a model file on labelled data, with a parity plot")
    e.add_argument("model")
    e.add_argument("data")
    e.add_argument("--plot", default=None)
    e.add_argument("--json", default=None, help="also write the figures to this JSON file")
    e.add_argument("--energy-key", default="auto",
                   help="label names in the data file (default auto: energy, REF_energy or DFT_energy, ...)")
    e.add_argument("--forces-key", default="auto")
    e.add_argument("--stress-key", default="auto")
    e.set_defaults(func=_evaluate)

    m = sub.add_parser("md", help="run molecular dynamics with a model file")
    m.add_argument("model")
    m.add_argument("--engine", choices=["ase", "lammps", "openmm"], default="ase")
    m.add_argument("--ensemble", choices=["nvt", "npt"], default="nvt", help="npt: LAMMPS or OpenMM")
    m.add_argument("--nprocs", type=int, default=1, help="MPI ranks (LAMMPS)")
    m.add_argument("--threads", type=int, default=1, help="torch threads per rank (LAMMPS, OpenMM)")
    m.add_argument("--structure", default=None,
                   help="starting structure, any file ASE reads (default, for H/O models only: the bundled water "
                   "box; for LAMMPS the 3,000-atom one)")
    m.add_argument("--output-dir", default=None,
                   help="folder for the LAMMPS log (default: the --trajectory's folder, else the current one)")
    m.add_argument("--steps", type=int, default=200)
    m.add_argument("--temperature", type=float, default=300.0)
    m.add_argument("--timestep", type=float, default=0.5, help="fs")
    m.add_argument("--replicate", type=int, nargs=3, default=[1, 1, 1])
    m.add_argument("--log-every", type=int, default=20)
    m.add_argument("--trajectory", default=None)
    m.add_argument("--uncertainty-threshold", type=float, default=None, metavar="EV_PER_A",
                   help="committee models: frames whose largest per-atom force spread exceeds this are harvested")
    m.add_argument("--harvest", default=None, help="extxyz file for the frames above the threshold (for labelling)")
    m.add_argument("--stop-on-uncertain", action="store_true", help="end the run at the first frame above it")
    m.add_argument("--uncertainty-log", default=None, help="CSV of the committee spread every --log-every steps")
    m.add_argument("--domain", choices=["warn", "stop", "off"], default="warn",
                   help="a configuration outside the training domain on the model card (atoms closer than seen in "
                   "training, a cell far from the training volumes): warn once naming the step and atoms (default), "
                   "stop the run, or do not check")
    m.set_defaults(func=_md)

    li = sub.add_parser("lammps-input", help="print the LAMMPS lines for a model (pair_style mlmd ...)")
    li.add_argument("model")
    li.add_argument("--elements", nargs="+", default=None, help="element of atom type 1, 2, ... (default: model's)")
    li.add_argument("--structure", default=None, help="also write this structure as a LAMMPS data file")
    li.add_argument("--replicate", type=int, nargs=3, default=[1, 1, 1])
    li.add_argument("--data", default="mlmd.data", help="data file to write with --structure")
    li.set_defaults(func=_lammps_input)

    al = sub.add_parser("learn", help="active learning: committee MD -> harvest uncertain frames -> label -> retrain")
    al.add_argument("config", help="learn YAML (see inputs/water/learn.yaml)")
    al.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. rounds=2")
    al.add_argument("--no-progress", action="store_true")
    al.add_argument("--resume", action="store_true", help="reuse the finished steps of an interrupted run")
    al.set_defaults(func=_learn)

    d = sub.add_parser("data", help="reference data")
    dsub = d.add_subparsers(dest="data_command", required=True)
    g = dsub.add_parser("generate", help="label liquid-water boxes with tblite (GFN2-xTB)")
    g.add_argument("-o", "--output", required=True)
    g.add_argument("--method", default="GFN2-xTB")
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(func=_data_generate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mlmd.config import ConfigError
    from mlmd.data.structures import DataError
    from mlmd.deploy.load import ModelFileError
    from mlmd.engines.checks import MDError
    from mlmd.engines.lammps import LammpsError
    from mlmd.uncertainty import UncertaintyExceeded

    try:
        return int(args.func(args) or 0)
    except (ConfigError, DataError, ModelFileError, LammpsError, MDError, FileNotFoundError, ValueError) as err:
        print(f"mlmd {args.command}: error: {err}", file=sys.stderr)
        return 2
    except UncertaintyExceeded as err:
        print(f"mlmd {args.command}: {err}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
