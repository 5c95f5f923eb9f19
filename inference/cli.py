"""The ``pyro-implicit`` command line: ``demo``, ``train``, ``evaluate``, ``analyze``."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

from pyro_implicit.forms import FORMS, check_form
from pyro_implicit.models import model_help

from .config import PRECISIONS, TrainConfig, default_device
from .data import DATA_CHOICES
from .distributed import teardown
from .evaluate import BN_BATCHES, evaluate, evaluate_run, format_table, parse_samples
from .methods import METHODS, validate
from .options import OPTION_GROUPS, add_option_flags, non_negative_int, positive_int
from .outputs import check_output_file, write_json
from .recipes import HYPERNET, describe_recipes, hypernet_label, resolve_config
from .runs import TrainingInterrupted
from .train import fit

DEFAULTS = TrainConfig()


def _samples(text: str) -> list[int]:
    try:
        return parse_samples(text)
    except ValueError as err:  # argparse would print "invalid parse_samples value" instead
        raise argparse.ArgumentTypeError(str(err)) from err


def _bn_batches(text: str) -> int | None:
    return None if text in ("all", "full") else positive_int(text)


def _form(text: str) -> str:
    try:
        return check_form(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULTS.model, help=f"network: {model_help()}")
    p.add_argument("--method", default=DEFAULTS.method, help="; ".join(
        f"{name}: {method.description}" for name, method in METHODS.items()))
    p.add_argument("--drop-rate", type=float, default=None,
                   help="dropout inside WideResNet blocks (default 0; 0.3 for mc-dropout)")
    p.add_argument("--data", default=DEFAULTS.data, help=f"dataset: {DATA_CHOICES}")
    p.add_argument("--data-root", default=None, help="where torchvision datasets live")
    p.add_argument("--download", action="store_true", help="download torchvision datasets")
    p.add_argument("--train-subset", type=positive_int, default=None, metavar="K",
                   help="class-balanced subset: the first K/C training items of each class")
    p.add_argument("--epochs", type=positive_int, default=DEFAULTS.epochs)
    p.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size)
    p.add_argument("--bn-groups", type=positive_int, default=DEFAULTS.bn_groups, metavar="G",
                   help="ghost BatchNorm: the batch runs in G groups while training, each with "
                        "its own statistics (default 1; with --z-draws K: 1 or a multiple of K)")
    p.add_argument("--lr", type=float, default=DEFAULTS.lr)
    p.add_argument("--weight-decay", type=float, default=DEFAULTS.weight_decay,
                   help="Gaussian prior on theta and non-generated parameters (0 = MLE)")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed,
                   help="fixes initialisation, data order, augmentation and z draws")
    p.add_argument("--device", default=None,
                   help="cpu or cuda[:N] (default: cuda when available, else cpu)")
    p.add_argument("--sync-bn", action="store_true",
                   help="under torchrun: BatchNorm statistics over the whole global batch")
    p.add_argument("--per-rank-z", action="store_true",
                   help="under torchrun: each rank draws its own z (default: one z per step)")
    p.add_argument("--precision", choices=PRECISIONS, default=DEFAULTS.precision,
                   help="bf16: forward and loss under bfloat16 autocast (GPU: Ampere or newer)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format (default: on for cuda, off for cpu)")
    p.add_argument("--workers", type=non_negative_int, default=DEFAULTS.workers,
                   help="DataLoader workers decoding imagenet:PATH batches")
    p.add_argument("--recipe", default=None, metavar="NAME",
                   help="a named paper experiment (pyro-implicit recipes lists them); any flag "
                        "given explicitly overrides the recipe's value")
    p.add_argument("--smoke", action="store_true",
                   help="scale down to the tiny network of the same family on tiny data, 1 "
                        "epoch: checks that a recipe runs")
    add_option_flags(p, {group: ", ".join(name for name, m in METHODS.items()
                                          if group in m.options) for group in OPTION_GROUPS})


_UNSET = object()


def explicit_flags(argv: list[str] | None) -> set[str]:
    """The train options the user typed (their dests), found by parsing the command line
    again into a namespace prefilled with a sentinel: argparse sets only what it reads."""
    argv = list(sys.argv[1:] if argv is None else argv)
    tail = argv[argv.index("train") + 1:] if "train" in argv else []
    probe = argparse.ArgumentParser(add_help=False)
    _add_train_args(probe)
    namespace = argparse.Namespace(**dict.fromkeys(vars(probe.parse_args([])), _UNSET))
    probe.parse_known_args(tail, namespace=namespace)
    return {name for name, value in vars(namespace).items() if value is not _UNSET}


def _flag_config(args: argparse.Namespace) -> TrainConfig:
    """Every train flag's value (typed or default) as a TrainConfig, not yet validated."""
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"recipe", "smoke"}  # see _config
    values = {name: value for name, value in vars(args).items() if name in names}
    values["device"] = args.device or default_device()
    if args.channels_last is None:
        values["channels_last"] = values["device"].startswith("cuda")
    if args.drop_rate is None:  # the method's own default (mc-dropout's rate), else none
        values["drop_rate"] = METHODS[args.method].defaults.get("drop_rate", 0.0) \
            if args.method in METHODS else 0.0
    return TrainConfig(**values)


def _config(args: argparse.Namespace) -> TrainConfig:
    """The run's configuration: the flags, or a recipe (and --smoke) overridden by the flags
    given explicitly."""
    flags = _flag_config(args)
    if args.recipe is None and not args.smoke:
        return validate(flags)
    return resolve_config(flags, getattr(args, "explicit", set()), args.recipe, args.smoke)


def cmd_train(args: argparse.Namespace) -> None:
    if args.resume:
        given = sorted(getattr(args, "explicit", set()))
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise ValueError(f"train --resume {args.resume} continues the run with its saved "
                             f"config.json; {flags} would be ignored: drop them (or start a "
                             "new run with --out)")
        fit(None, Path(args.resume), resume=True)
    elif args.out is None:
        raise ValueError("train needs --out RUN (a new run folder) or --resume RUN")
    else:
        config = _resolved(_config(args))
        if config.from_run is not None:
            given = sorted(getattr(args, "explicit", set()) - {"method", "from_run", "device"})
            if given:
                flags = ", ".join("--" + name.replace("_", "-") for name in given)
                raise ValueError(f"train --from {args.from_run} takes that run's config.json; "
                                 f"{flags} would be ignored: drop them")
        fit(config, Path(args.out))
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run finished: {args.resume or args.out}")


def _resolved(config: TrainConfig) -> TrainConfig:
    """``config`` with a relative ``imagefolder:`` / ``imagenet:`` path made absolute, so the run
    can be evaluated from any directory."""
    kind, sep, path = config.data.partition(":")
    if not sep or Path(path).is_absolute():
        return config
    return dataclasses.replace(config, data=f"{kind}:{Path(path).resolve()}")


def cmd_recipes(args: argparse.Namespace) -> None:
    print(describe_recipes())


def cmd_evaluate(args: argparse.Namespace) -> None:
    if args.json:
        check_output_file(args.json, "--json")
    result = evaluate_run(Path(args.run), args.samples, args.data, args.bn_batches,
                          seed=args.seed, form=args.form, device=args.device,
                          calibration_data=args.calibration_data, shift=args.shift,
                          corruptions=args.shift_corruptions, severities=args.shift_severities,
                          ood=args.ood, shift_subset=args.shift_subset,
                          dee_runs=args.dee_runs)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    rows = {f"x{n}": m for n, m in result["samples"].items()}
    if "probit" in result:  # a closed-form predictive (laplace)
        rows["probit"] = result["probit"]
    print(format_table(rows))
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")


def cmd_analyze(args: argparse.Namespace) -> None:
    from .analyze import POSTERIOR, SUMMARY, analyze_runs  # imports ArviZ: only when asked

    summary = analyze_runs(args.runs, args.out, draws=args.draws, pairs=args.pairs,
                           predictive_draws=args.predictive_draws, weights=args.weight,
                           bn_batches=args.bn_batches, test_subset=args.test_subset,
                           seed=args.seed)
    corr, faults = summary["correlation"], summary["fault_table"]
    print(f"mean |r| within blocks {corr['within']}, across blocks {corr['across']} "
          f"({corr['draws']} draws); {faults['models']}-model fault counts {faults['counts']}")
    print(f"wrote {Path(args.out) / POSTERIOR} and {Path(args.out) / SUMMARY}")


def demo_runs() -> list[tuple[str, str, dict]]:
    """The demo's (label, folder, TrainConfig changes): MAP, the paper's hypernet (every knob
    pinned) and ``train --method hypernet``'s defaults, the best configuration found
    (docs/results.md), left out while those are the paper's."""
    best, paper = TrainConfig(method="hypernet"), TrainConfig(**HYPERNET)
    runs = [("MAP", "map", {"method": "map"}),
            (f"paper hypernet {hypernet_label(paper)}", "hypernet-paper", HYPERNET)]
    if best != paper:
        runs.append((f"best hypernet {hypernet_label(best)}", "hypernet-best",
                     {"method": "hypernet"}))
    return runs


def cmd_demo(args: argparse.Namespace) -> None:
    if args.json:
        check_output_file(args.json, "--json")
    runs = demo_runs()
    if args.out:
        for _, folder, _ in runs:
            if (Path(args.out) / folder).exists():
                raise ValueError(f"demo --out {args.out} already holds {folder}/: choose a new "
                                 "--out folder, or remove that one")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="pyro-implicit-demo-"))
    rows, seconds = {}, {}
    for label, folder, changes in runs:
        config = validate(TrainConfig(**{**changes, "model": args.model, "data": "digits",
                                         "epochs": args.epochs, "seed": args.seed}))
        t0 = time.perf_counter()
        print(f"training {label} ({config.model}, {config.epochs} epochs on digits) ...")
        run = fit(config, out / folder, progress=None)
        seconds[label] = time.perf_counter() - t0
        result = evaluate(run, samples=(1, 16), seed=args.seed)["samples"]
        if run.guide.is_point:
            rows[label] = result["1"]
        else:
            rows[f"{label} x1"], rows[f"{label} x16"] = result["1"], result["16"]
    last, map_nll = runs[-1][0], rows["MAP"]["nll"]
    nll = rows[f"{last} x16"]["nll"]
    verdict = (f"{last} x16 NLL {nll:.4f} {'beats' if nll < map_nll else 'does not beat'} "
               f"MAP's {map_nll:.4f}")
    print()
    print(f"digits test set ({len(run.data.test_y)} images), {args.model}, {args.epochs} epochs:")
    print(format_table(rows))
    print(verdict)
    print("training time: " + ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items())
          + f"; runs in {out}")
    if args.json:
        write_json(args.json, {"model": args.model, "epochs": args.epochs, "seed": args.seed,
                               "num_test": len(run.data.test_y), "rows": rows,
                               "verdict": verdict, "train_seconds": seconds})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyro-implicit",
        description="Hypernetwork (implicit) posteriors for ResNet-family CNNs in Pyro.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train map and the hypernets on digits and compare them")
    demo.add_argument("--model", default="wrn-16-2")
    demo.add_argument("--epochs", type=positive_int, default=30)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default=None, help="folder for the runs (default: a temp dir)")
    demo.add_argument("--json", default=None, metavar="FILE", help="also write the table here")
    demo.set_defaults(func=cmd_demo)

    train = sub.add_parser("train", help="train a run into a run folder")
    _add_train_args(train)
    train.add_argument("--out", default=None, help="new run folder")
    train.add_argument("--resume", default=None, metavar="RUN", help="continue this run folder")
    train.set_defaults(func=cmd_train)

    rec = sub.add_parser("recipes", help="list the paper's experiments runnable as "
                                         "train --recipe NAME")
    rec.set_defaults(func=cmd_recipes)

    ev = sub.add_parser("evaluate", help="N-sample averaged error, NLL, ECE, Brier of a run")
    ev.add_argument("run", help="run folder")
    ev.add_argument("--samples", type=_samples, default=[1, 2, 4, 8, 16],
                    help="comma-separated N values (default 1,2,4,8,16)")
    ev.add_argument("--json", default=None, metavar="FILE", help="write the results here")
    ev.add_argument("--data", default=None, metavar="SPEC",
                    help="evaluate on this dataset's test split (same classes)")
    ev.add_argument("--bn-batches", type=_bn_batches, default=BN_BATCHES, metavar="K|all",
                    help=f"training batches for BN recalibration per sample (default "
                         f"{BN_BATCHES}; all: one full pass)")
    ev.add_argument("--seed", type=int, default=0, help="seed of the posterior draws")
    ev.add_argument("--device", default=None,
                    help="evaluate on this device, e.g. cpu for a run trained on cuda "
                         "(default: the run's own)")
    ev.add_argument("--form", type=_form, default="branching", metavar="FORM",
                    help=f"how N draws are averaged: {', '.join(FORMS)} (softmax of N networks; "
                         "N copies of each residual block; N x the channels of each generated "
                         "layer)")
    ev.add_argument("--calibration-data", default=None, metavar="SPEC",
                    help="fit the temperature on this dataset's test split, held out (default: "
                         "a seeded subset of the training items, in-sample)")
    ev.add_argument("--shift", default=None, metavar="corruptions|cifar10c:FOLDER",
                    help="also evaluate on CIFAR-10-C-style corruptions of the test set "
                         "(generated, cached) or on the published CIFAR-10-C files")
    ev.add_argument("--shift-corruptions", default=None, metavar="NAME,...",
                    type=lambda text: [v.strip() for v in text.split(",") if v.strip()],
                    help="only these corruptions (default: all 15)")
    ev.add_argument("--shift-severities", default=None, metavar="S,...",
                    type=lambda text: [int(v) for v in text.split(",") if v.strip()],
                    help="only these severities in 1..5 (default: all five)")
    ev.add_argument("--shift-subset", default=None, metavar="K", type=positive_int,
                    help="evaluate each shifted set on a seeded subset of K items (default: "
                         "all; 75 corrupted copies cost 75 test passes per draw)")
    ev.add_argument("--dee-runs", default=None, metavar="RUN,...",
                    type=lambda text: [Path(v.strip()) for v in text.split(",") if v.strip()],
                    help="independently trained map runs: report each N's deep-ensemble "
                         "equivalent (members whose average matches its calibrated NLL)")
    ev.add_argument("--ood", default=None, metavar="SPEC",
                    help="AUROC/AUPR of telling this dataset's test split (fitted to the run's "
                         "input size, e.g. digits) from the test set")
    ev.set_defaults(func=cmd_evaluate)

    an = sub.add_parser("analyze", help="posterior analysis: weight correlations, diversity, "
                                        "calibration, as ArviZ netCDF + summary.json")
    an.add_argument("runs", nargs="+", metavar="RUN",
                    help="run folder; several form an ensemble (one draw per run)")
    an.add_argument("--out", required=True, metavar="DIR",
                    help="writes DIR/posterior.nc (InferenceData) and DIR/summary.json")
    an.add_argument("--draws", type=positive_int, default=1000, metavar="S",
                    help="posterior draws of the weights (default 1000, as the paper)")
    an.add_argument("--pairs", type=positive_int, default=1000, metavar="K",
                    help="random weight pairs within blocks, and as many across (default 1000)")
    an.add_argument("--predictive-draws", type=positive_int, default=16, metavar="N",
                    help="draws evaluated on the test set, BN recalibrated each (default 16)")
    an.add_argument("--weight", action="append", default=[], metavar="SITE[i,j,..]",
                    help="also record this weight, e.g. stage1.0.conv1.weight[0,0,1,1]")
    an.add_argument("--bn-batches", type=_bn_batches, default=BN_BATCHES, metavar="K|all",
                    help=f"training batches for BN recalibration per draw (default "
                         f"{BN_BATCHES}; all: one full pass)")
    an.add_argument("--test-subset", type=positive_int, default=None, metavar="K",
                    help="K random test points instead of the whole test set")
    an.add_argument("--seed", type=int, default=0, help="seed of the draws and pairs")
    an.set_defaults(func=cmd_analyze)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train":
        args.explicit = explicit_flags(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError) as err:
        print(f"pyro-implicit: error: {err}", file=sys.stderr)
        return 2
    except TrainingInterrupted as stop:
        print(f"pyro-implicit: {stop}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("pyro-implicit: interrupted; the last checkpoint is kept "
              "(continue with train --resume RUN)", file=sys.stderr)
        return 130
    finally:
        teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
