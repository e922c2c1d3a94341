"""Command line of the survey: ``python -m survey COMMAND --help``.

Examples
--------
Create a study from the default shipped bundle (the methods, mode and steps its bundle.json
``survey`` section names: vanilla vs robust at s=16 with the unconditional denoiser for MNIST;
200 pairs, 10 % gold and 10 % repeated pairs), invite raters, serve, report::

    python -m survey init   --db survey.db
    python -m survey create --db survey.db --name mnist-v-r --from-bundle \\
        --pairs 200 --gold-rate 0.1 --repeat-rate 0.1 --seed 0 --exclude-gold-below 0.75
    python -m survey invite --db survey.db --count 30 --base-url http://localhost:8000
    python -m survey open-link --db survey.db --base-url https://HOST --quota 60   # Prolific, MTurk, ...
    RCG_ADMIN_PASSWORD='long secret' python -m survey serve --db survey.db --host 0.0.0.0 --port 8000
    python -m survey report --db survey.db              # Markdown; --json for JSON
    python -m survey export --db survey.db --out votes.csv
    python -m survey report --votes votes.csv --denominator all
    python -m survey power  --paper                     # sample size for the paper's effect

From existing samples instead of the bundle::

    python -m survey create --db s.db --name imagenet --from-npz vanilla.npz robust.npz \\
        --names vanilla robust --class-names imagenet_classes.txt --pairs 200
    python -m survey create --db s.db --name folders --from-folders out/vanilla out/robust
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from .quality import DEFAULT_FAST_MS, ExclusionRules

from .config import ADMIN_PASSWORD_ENV as ADMIN_ENV, SURVEY_DB_ENV


EXAMPLES = {
    "init": """\
  python -m survey init --db survey.db
  python -m survey init --db postgresql+psycopg://me@dbhost/survey""",
    "create": """\
  python -m survey create --db survey.db --name mnist-v-r --from-bundle --pairs 200 --per-rater 40 \\
      --gold-rate 0.1 --repeat-rate 0.1 --seed 0 --exclude-gold-below 0.75
  python -m survey create --db survey.db --name three --from-bundle \\
      --methods vanilla:0.5 robust:1.0 strong=robust:2 --pairs 100
  python -m survey create --db survey.db --name imagenet --from-npz vanilla.npz robust.npz \\
      --names vanilla robust --class-names imagenet_classes.txt --pairs 200
  python -m survey create --db survey.db --name folders --from-folders out/vanilla out/robust
  python -m survey create --db survey.db --name from-lab --from-run runs/0003/run_config.json \\
      --columns vanilla robust --pairs 100 --seed 1   # a lab run: same configs, sampler, steps""",
    "invite": """\
  python -m survey invite --db survey.db --count 30 --base-url http://HOST:8000
  python -m survey invite --db survey.db --name "Ann" --name "Bob" --base-url http://HOST:7860/survey""",
    "open-link": """\
  python -m survey open-link --db survey.db --study mnist-v-r --base-url https://HOST/survey --quota 60 \\
      --completion-code C7Q2XK1P --completion-url "https://app.prolific.com/submissions/complete?cc=C7Q2XK1P" \\
      --screenout-code SCRN0UT1
  python -m survey open-link --db survey.db --id-param workerId --keep-params assignmentId hitId   # MTurk
  python -m survey open-link --db survey.db --quota 80          # change one setting, keep the others
  python -m survey open-link --db survey.db --close             # no new participants (the others may finish)""",
    "serve": """\
  RCG_ADMIN_PASSWORD='long secret' python -m survey serve --db survey.db --host 0.0.0.0 --port 8000
  python -m survey serve --db survey.db          # raters only; the results view stays off
(give the password through RCG_ADMIN_PASSWORD, the same variable as the lab's; a
--admin-password on the command line can be read by other users of the machine, e.g.
with ps. The old name SURVEY_ADMIN_PASSWORD is still read, with a deprecation note)""",
    "report": """\
  python -m survey report --db survey.db
  python -m survey report --db survey.db --json --out report.json
  python -m survey report --db survey.db --denominator all --thresholds 50,60,70,80
  python -m survey report --db survey.db --no-exclusions     # every rater; lists whom the rules would remove
  python -m survey report --votes votes.csv --order robust,vanilla --exclude-gold-below 0.75""",
    "export": """\
  python -m survey export --db survey.db --out votes.csv
  python -m survey export --db survey.db --study mnist-v-r > votes.csv""",
    "power": """\
  python -m survey power --paper
  python -m survey power --effect 0.56 --tie-rate 0.27 --answers-per-pair 25
  python -m survey power --effect 0.6 --power 0.9 --answers-per-pair 20 --icc 0.05 --json""",
    "info": """\
  python -m survey info --db survey.db""",
}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written; an option's default shown when it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        none = default is None or default is False or default is argparse.SUPPRESS or default in ([], "")
        if action.option_strings and "%(default)" not in text and "(default" not in text and not none:
            text += " (default: %(default)s)"
        return text


def _command(sub, name: str, help_text: str) -> argparse.ArgumentParser:  # noqa: ANN001 - argparse subparsers
    return sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
                          epilog="examples:\n" + EXAMPLES[name], formatter_class=_HelpFormatter)


def default_media(db: str) -> Path:
    """``<db stem>_media`` next to a SQLite file; other databases need --media."""
    from sqlalchemy.engine import make_url

    from .db import normalise_url

    url = make_url(normalise_url(db))
    if url.get_backend_name() != "sqlite" or not url.database:
        raise SystemExit("error: give --media FOLDER for a non-SQLite database (every server must see the folder)")
    path = Path(url.database)
    return path.with_name(path.stem + "_media")


def _add_db(p: argparse.ArgumentParser, media: bool = False) -> None:
    default = os.environ.get(SURVEY_DB_ENV) or None
    p.add_argument("--db", required=default is None, default=default,
                   help="SQLAlchemy URL or SQLite file, e.g. survey.db or postgresql+psycopg://user@host/survey "
                        f"(default: the environment variable {SURVEY_DB_ENV}, which keeps a database password "
                        "out of ps)")
    if media:
        p.add_argument("--media", type=Path, help="folder of the study images (default: <db>_media next to a "
                                                  "SQLite file)")


def _add_exclusions(p: argparse.ArgumentParser, when: str) -> None:
    g = p.add_argument_group(f"exclusion rules ({when})")
    g.add_argument("--exclude-gold-below", type=float, metavar="FRACTION",
                   help="drop raters whose gold-pair accuracy is below this, e.g. 0.75")
    g.add_argument("--exclude-faster-than-ms", type=float, metavar="MS",
                   help="drop raters whose median answer time is below this")
    g.add_argument("--exclude-one-sided", action="store_true", help="drop raters who always chose the same side")
    g.add_argument("--exclude-inconsistent-below", type=float, metavar="FRACTION",
                   help="drop raters whose repeat-pair consistency is below this")
    g.add_argument("--exclude-rater", action="append", default=[], metavar="ID", help="drop this rater (repeatable)")


def _rules(args: argparse.Namespace) -> ExclusionRules | None:
    given = any([args.exclude_gold_below is not None, args.exclude_faster_than_ms is not None, args.exclude_one_sided,
                 args.exclude_inconsistent_below is not None, args.exclude_rater])
    if not given:
        return None
    return ExclusionRules(args.exclude_gold_below, args.exclude_faster_than_ms, args.exclude_one_sided,
                          args.exclude_inconsistent_below, tuple(args.exclude_rater))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m survey", description="Pairwise human preference study "
                                     "(Left / Right / Same) of guided-diffusion samples, and its analysis.",
                                     epilog="examples:\n" + __doc__.split("Examples\n--------\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(sub, "init", "create or migrate the database schema")
    _add_db(p)

    p = _command(sub, "create", "create a study (from the bundle, two .npz files or two folders)")
    _add_db(p, media=True)
    p.add_argument("--name", required=True, help="study name (unique in the database)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-bundle", nargs="?", const="", metavar="BUNDLE",
                     help="generate with a bundle: a shipped bundle's name (mnist, ...) or a bundle folder (default: "
                          "the default shipped bundle, see models/index.json)")
    src.add_argument("--diffusers-dir", default=None, metavar="PATH",
                     help="generate with a local diffusers pipeline folder and the --guide networks")
    src.add_argument("--from-npz", nargs=2, type=Path, metavar=("A.npz", "B.npz"),
                     help="two guided-diffusion sample files with the same seeds and labels (paired by index)")
    src.add_argument("--from-folders", nargs=2, type=Path, metavar=("DIR_A", "DIR_B"),
                     help="two folders of images matched by relative file name")
    src.add_argument("--from-run", type=Path, metavar="RUN_CONFIG_JSON",
                     help="a lab run's run_config.json (side by side download): the same column configs, sampler, "
                          "steps and models, fresh seeds")
    p.add_argument("--columns", nargs="+", metavar="NAME",
                   help="with --from-run: the run's columns to compare (default: all, at least two)")
    p.add_argument("--bundle", default=None, metavar="BUNDLE",
                   help="with --from-run: the models, a shipped bundle's name or a folder (default: the run's models "
                        "folder when it still exists, else the default shipped bundle)")
    p.add_argument("--methods", nargs="+", default=None,
                   help="bundle methods as column specs, [label=]guide[:scale][/mode=unconditional] (default: the "
                        "bundle's survey.methods in bundle.json, chosen where the vanilla-vs-robust contrast shows; "
                        f"{' '.join(FALLBACK_SURVEY_METHODS)} for a bundle without one)")
    p.add_argument("--guide", action="append", default=[], metavar="NAME=PATH",
                   help="with --diffusers-dir: a guide, NAME=PATH (train.classifier model file) or NAME=PRESET:PATH; "
                        "repeatable")
    p.add_argument("--names", nargs=2, metavar=("A", "B"), help="method names of the two files / folders")
    p.add_argument("--class-names", type=Path, help="JSON list or one class name per line (for labels)")
    p.add_argument("--pairs", type=int, default=None,
                   help="number of (class, seed) units; bundle default 200, files default all")
    p.add_argument("--per-rater", type=int, default=40, help="main pairs each rater answers")
    p.add_argument("--gold-rate", type=float, default=0.0, help="gold (attention check) items per main item")
    p.add_argument("--repeat-rate", type=float, default=0.0, help="repeated (sides flipped) items per main item")
    p.add_argument("--seed", type=int, default=0, help="draws classes, seeds, subsets and gold pairs")
    p.add_argument("--respacing", default=None,
                   help="sampling steps, e.g. 25 or ddim25, taken as written (default: the bundle's survey steps, "
                        "spaced with DDIM's stride, ddimN, for --sampler ddim)")
    p.add_argument("--sampler", default=None, choices=["ddpm", "ddim"],
                   help="default: the bundle's survey sampler, else ddpm")
    p.add_argument("--batch-size", type=int, default=64,
                   help="units generated at once (default: 64; larger batches are faster while memory lasts)")
    p.add_argument("--workers", default="auto", type=_workers_arg,
                   help="processes that generate side by side, one thread each (default: auto = one per CPU core, "
                        "at most one per 16 pairs; 1 on a GPU). On a small CPU processes beat threads: see README, "
                        "Benchmarks")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="precision when generating: fp32 (exact, default), bf16 (the CPU fast path) or fp16 "
                        "(CUDA); the networks' torsos run in 16 bits, the guidance gradient stays fp32")
    p.add_argument("--fast-ms", type=float, default=DEFAULT_FAST_MS, help="median latency below which a rater is "
                                                                          "flagged as fast")
    _add_exclusions(p, "declared now, applied by every report of this study")

    p = _command(sub, "invite", "create rater links")
    _add_db(p)
    p.add_argument("--study", help="study name or id (default: the newest)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--count", type=int, default=1, help="number of unnamed raters")
    who.add_argument("--name", action="append", dest="rater_names", help="a rater's name (repeatable)")
    p.add_argument("--base-url", default="http://127.0.0.1:8000",
                   help="where raters reach the survey, e.g. http://host:7860/survey when mounted in the lab")

    p = _command(sub, "open-link", "open (or change) a study's public link for crowdsourcing platforms (Prolific, "
                                   "MTurk, ...)")
    _add_db(p)
    p.add_argument("--study", help="study name or id (default: the newest)")
    p.add_argument("--base-url", default="http://127.0.0.1:8000",
                   help="where participants reach the survey, e.g. https://host/survey")
    p.add_argument("--id-param", default=None, metavar="NAME",
                   help="URL parameter carrying the participant id (new link: PROLIFIC_PID)")
    p.add_argument("--keep-params", nargs="*", default=None, metavar="NAME",
                   help="other URL parameters stored with the participant and exported (new link: STUDY_ID "
                        "SESSION_ID; give none to keep none)")
    p.add_argument("--quota", type=int, default=None, help="at most this many participants (default: no limit)")
    p.add_argument("--no-quota", action="store_true", help="remove the quota")
    p.add_argument("--completion-code", default=None, help="code shown at the end (new link: a random one)")
    p.add_argument("--completion-url", default=None, help="http(s) address participants are sent to at the end, "
                                                          "e.g. the platform's completion URL")
    p.add_argument("--screenout-code", default=None,
                   help="code shown instead when the study's gold rule (--exclude-gold-below) excludes the "
                        "participant (default: everyone gets the completion code)")
    p.add_argument("--screenout-url", default=None, help="http(s) address for screened-out participants")
    p.add_argument("--new-secret", action="store_true", help="replace the link's secret (the old link stops working)")
    p.add_argument("--close", action="store_true",
                   help="take no new participants (those who started may finish); run again without it to reopen")

    p = _command(sub, "serve", "run the survey web server alone (uvicorn)")
    _add_db(p, media=True)
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--admin-password", default=None,
                   help=f"enables /results; prefer the environment variable {ADMIN_ENV} (a command-line "
                        "password is visible to other users in `ps`)")
    p.add_argument("--log-level", default="warning", help="uvicorn log level (debug, info, warning, error)")

    p = _command(sub, "report", "analyse the votes (Markdown, or --json)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--db", help="study database")
    src.add_argument("--votes", type=Path, help="votes CSV (format: survey/votes.py, README)")
    p.add_argument("--study", help="study name or id (default: the newest)")
    p.add_argument("--json", action="store_true", help="JSON instead of Markdown")
    p.add_argument("--denominator", choices=["decisive", "all"], default="decisive",
                   help="Table 2 share of a pair: of its decisive answers (the paper) or of all its answers")
    p.add_argument("--thresholds", default="50,60,70,80", help="Table 2 thresholds in percent")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence level of every interval")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates (0 = skip)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--order", help="method order, first = the paper's 'robust', e.g. robust,vanilla")
    p.add_argument("--fast-ms", type=float, default=None, help=f"fast flag threshold (default: study setting or "
                                                               f"{DEFAULT_FAST_MS:g})")
    p.add_argument("--out", type=Path, help="write to this file instead of standard output")
    _add_exclusions(p, "given here replace the study's declared rules; say so in the paper")
    p.add_argument("--no-exclusions", action="store_true",
                   help="count every rater: the rules are listed with whom they would remove, but not applied")

    p = _command(sub, "export", "write the raw votes as CSV (format: README, survey/votes.py)")
    _add_db(p)
    p.add_argument("--study", help="study name or id (default: the newest)")
    p.add_argument("--out", type=Path, help="CSV file (default: standard output)")

    p = _command(sub, "power", "sample size for the sign test (power analysis)")
    eff = p.add_mutually_exclusive_group(required=True)
    eff.add_argument("--effect", type=float, help="expected first-method share of decisive answers, e.g. 0.555")
    eff.add_argument("--paper", action="store_true", help="the paper's effect, tie rate and answers per pair")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (two-sided)")
    p.add_argument("--power", type=float, default=0.8, help="required power")
    p.add_argument("--tie-rate", type=float, default=0.0, help="expected share of Same answers")
    p.add_argument("--answers-per-pair", type=float, default=None,
                   help="expected answers per pair (prints the pairs needed)")
    p.add_argument("--icc", type=float, default=0.0, help="intra-pair correlation (design effect)")
    p.add_argument("--json", action="store_true", help="JSON instead of text")

    p = _command(sub, "info", "list the studies in a database and their counts")
    _add_db(p)
    return parser


# --------------------------------------------------------------------------- commands
def cmd_init(args: argparse.Namespace) -> int:
    from .db import current_revision, open_db

    db = open_db(args.db)
    print(f"{args.db}: schema at revision {current_revision(db.engine)}")
    return 0


FALLBACK_SURVEY_METHODS = ("vanilla:0.5", "robust:1.0")


def bundle_survey_defaults(bundle: Any) -> dict[str, Any]:
    """The study a bundle recommends (``survey`` in bundle.json: ``methods`` as column
    specs, optional ``respacing`` and ``sampler``), else the fallback methods."""
    section = bundle.section("survey")
    if not section.get("methods"):
        return {"methods": list(FALLBACK_SURVEY_METHODS)}
    methods = section["methods"]
    if not isinstance(methods, list) or len(methods) < 2 or not all(isinstance(m, str) for m in methods):
        raise SystemExit("bundle.json survey.methods must be a list of at least two column specs, e.g. "
                         '["vanilla:16/mode=unconditional", "robust:16/mode=unconditional"]')
    out: dict[str, Any] = {"methods": methods}
    for key in ("respacing", "sampler"):
        if section.get(key) is not None:
            out[key] = str(section[key])
    return out


def cmd_create(args: argparse.Namespace) -> int:
    from engine.allocator import keep_freed_memory

    from .create import MethodSpec, StudyPlan, check_name_free, create_study, read_class_names, units_from_bundle, \
        units_from_folders, units_from_npz
    from .db import open_db
    from .progress import GenerationProgress

    keep_freed_memory()  # on the main thread, before any sampling (engine.allocator)
    if not args.from_run and (args.columns or args.bundle):
        raise SystemExit("error: --columns and --bundle go with --from-run (with --from-bundle, name the folder there)")
    media = args.media or default_media(args.db)
    run = _run_plan(args) if args.from_run else None  # a bad run file or models: refused before the database opens
    plan = StudyPlan(args.per_rater, args.gold_rate, args.repeat_rate, args.seed, _rules(args) or ExclusionRules(),
                     args.fast_ms)
    db = open_db(args.db)
    check_name_free(db, args.name)  # before any image is generated
    class_names = read_class_names(args.class_names)
    if args.guide and not args.diffusers_dir:
        raise SystemExit("--guide goes with --diffusers-dir (a bundle folder names its own guides)")

    if run is not None:
        from .create import study_from_run

        plan_of_run, bundle, bundle_path = run
        progress = GenerationProgress(len(plan_of_run.configs))
        n = args.pairs if args.pairs is not None else 200
        workers = _resolve_workers(args.workers, n, bundle)
        _say_workers(workers, args.workers)
        study_id = study_from_run(db, media, args.name, plan_of_run, bundle, n, seed=args.seed, study_plan=plan,
                                  bundle_path=bundle_path, batch_size=args.batch_size, workers=workers,
                                  progress=progress)
        return _created(db, args.name, study_id, media)
    if args.from_bundle is not None or args.diffusers_dir:
        from engine.bundles import load_bundle
        from engine.checkpoints import BundleError
        from engine.model_specs import open_models

        device = args.device
        if device is None:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        if args.diffusers_dir:
            try:
                bundle = open_models(diffusers_dir=args.diffusers_dir, guides=args.guide, device=device)
            except (BundleError, KeyError) as exc:
                raise SystemExit(f"--diffusers-dir {args.diffusers_dir}: {exc}") from None
        else:
            bundle = load_bundle(args.from_bundle or None)
        _to_device(bundle, device, args.precision)
        bundle_path = args.diffusers_dir or bundle.source
        defaults = bundle_survey_defaults(bundle)
        specs = [MethodSpec.parse(m) for m in args.methods or defaults["methods"]]
        args.sampler = args.sampler or defaults.get("sampler")
        if args.respacing is None:  # the bundle's steps, spaced for the sampler (DDIM: its own stride)
            from engine.diffusion.schedules import respacing_spaced_for

            default = defaults.get("respacing") or bundle.default_respacing
            args.respacing = respacing_spaced_for(bundle.diffusion_config.steps, default, args.sampler or "ddpm") or None
        n = args.pairs if args.pairs is not None else 200

        progress = GenerationProgress(len(specs))
        workers = 1 if args.diffusers_dir and args.workers == "auto" else _resolve_workers(args.workers, n, bundle)
        _say_workers(workers, args.workers)
        units = units_from_bundle(bundle, specs, n, args.seed, respacing=args.respacing, sampler=args.sampler or "ddpm",
                                  batch_size=args.batch_size, bundle_path=bundle_path, workers=workers,
                                  progress=progress)
        methods = [s.label for s in specs]
        source = {"kind": "diffusers" if args.diffusers_dir else "bundle", "bundle": bundle_path,
                  "methods": methods, "respacing": args.respacing, "sampler": args.sampler or "ddpm"}
        if args.diffusers_dir:
            source["guides"] = list(args.guide)
    elif args.from_npz:
        units = units_from_npz(*args.from_npz, methods=args.names, class_names=class_names, limit=args.pairs,
                               seed=args.seed)
        methods = list(units[0])
        source = {"kind": "npz", "files": [str(p) for p in args.from_npz]}
    else:
        units = units_from_folders(*args.from_folders, methods=args.names, class_names=class_names,
                                   limit=args.pairs, seed=args.seed)
        methods = list(units[0])
        source = {"kind": "folders", "folders": [str(p) for p in args.from_folders]}
    study_id = create_study(db, media, args.name, units, methods, plan, source)
    return _created(db, args.name, study_id, media)


def _created(db, name: str, study_id: int, media) -> int:  # noqa: ANN001 - SurveyDB, path
    from .create import study_counts

    counts = study_counts(db, study_id)
    print(f"study {name!r} (id {study_id}) created: {counts['main_pairs']} main, {counts['gold_pairs']} gold, "
          f"{counts['repeat_pairs']} repeat pairs; {counts['images']} images in {media}")
    return 0


def _run_plan(args: argparse.Namespace):  # noqa: ANN202 - (RunPlan, bundle, bundle path)
    """The run file read, its columns chosen and checked against the models it needs."""
    from engine.bundles import DEFAULT_BUNDLE_DIR, load_bundle

    from .create import StudyError, check_run_against_bundle, read_run_config

    given = [flag for flag, value in (("--methods", args.methods), ("--respacing", args.respacing),
                                      ("--sampler", args.sampler), ("--names", args.names)) if value]
    if given:
        raise StudyError(f"--from-run takes the columns, steps and sampler from the run; drop {', '.join(given)} "
                         "(choose columns with --columns)")
    plan = read_run_config(args.from_run, args.columns)
    folder = args.bundle
    if folder is None and plan.bundle_source and (Path(plan.bundle_source) / "bundle.json").is_file():
        folder = plan.bundle_source
    bundle = load_bundle(folder or None)
    if plan.bundle_name and bundle.name != plan.bundle_name:
        raise StudyError(f"{plan.path} was made with the models {plan.bundle_name!r}, the loaded ones are "
                         f"{bundle.name!r} ({folder or DEFAULT_BUNDLE_DIR}); give the run's models with --bundle DIR")
    check_run_against_bundle(plan, bundle)
    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    _to_device(bundle, device, args.precision)
    return plan, bundle, str(folder or DEFAULT_BUNDLE_DIR)


def _workers_arg(text: str) -> str | int:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of processes (1, 2, ...) or auto, got {text!r}")
    return value


def _resolve_workers(workers: str | int, pairs: int, bundle) -> int:  # noqa: ANN001 - an engine Bundle
    """``auto``: one process per core on a CPU (at most one per 16 pairs), 1 on a GPU."""
    from engine.parallel_sampling import auto_workers

    return auto_workers(pairs, str(bundle.device)) if workers == "auto" else int(workers)


def _say_workers(workers: int, asked: str | int) -> None:
    """One line on stderr: how many processes generate, and a note when that exceeds the cores."""
    from engine.parallel_sampling import available_cores

    cores = available_cores()
    how = "auto: " if asked == "auto" else ""
    note = f"; more than the {cores} core(s) available, so they share them (slower)" if workers > cores else ""
    print(f"generating with {how}{workers} process(es){note}", file=sys.stderr)


def _to_device(bundle, device: str, precision: str) -> None:  # noqa: ANN001 - an engine Bundle
    """Move the models; a precision the device cannot run is a clean exit naming the allowed ones."""
    from engine.precision import PrecisionError

    try:
        bundle.to(device, precision)
    except PrecisionError as exc:
        raise SystemExit(f"error: {exc}") from None


def cmd_invite(args: argparse.Namespace) -> int:
    from .create import find_study
    from .db import open_db
    from .flow import invite, invite_links

    db = open_db(args.db, must_exist=True)
    study = find_study(db, args.study)
    raters = invite(db, study.id, args.count, args.rater_names)
    for rater, link in zip(raters, invite_links(raters, args.base_url)):
        print(f"{rater.name}\t{link}" if rater.name else link)
    return 0


def cmd_open_link(args: argparse.Namespace) -> int:
    from .create import find_study
    from .db import open_db
    from .links import _UNSET, open_link

    if args.quota is not None and args.no_quota:
        raise SystemExit("error: give --quota N or --no-quota, not both")
    db = open_db(args.db, must_exist=True)
    study = find_study(db, args.study)
    quota = None if args.no_quota else (args.quota if args.quota is not None else _UNSET)
    link = open_link(db, study.id, id_param=args.id_param, keep_params=args.keep_params, quota=quota,
                     completion_code=args.completion_code,
                     completion_url=args.completion_url if args.completion_url is not None else _UNSET,
                     screenout_code=args.screenout_code if args.screenout_code is not None else _UNSET,
                     screenout_url=args.screenout_url if args.screenout_url is not None else _UNSET,
                     new_secret=args.new_secret, is_open=not args.close)
    print(f"study {link.study!r}: link {'OPEN' if link.is_open else 'CLOSED (no new participants)'}, "
          f"{link.participants} participant(s)" + (f" of {link.quota}" if link.quota else " (no quota)"))
    print(f"study link:     {link.url(args.base_url)}?{link.id_param}=<participant id>")
    print(f"for Prolific:   {link.prolific_url(args.base_url)}")
    print(f"participant id: URL parameter {link.id_param}; also stored: {', '.join(link.keep_params) or 'nothing'}")
    print(f"completion:     code {link.completion_code}" + (f", then to {link.completion_url}" if link.completion_url
                                                            else " (no redirect)"))
    if link.screenout_code:
        print(f"screen-out:     code {link.screenout_code}" + (f", then to {link.screenout_url}" if link.screenout_url
                                                               else "") + " (gold rule of the study: "
              + "; ".join(ExclusionRules.from_dict(study.settings.get("exclusions")).describe()) + ")")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .web import serve

    from .config import admin_password

    password = admin_password(args.admin_password)
    media = args.media or default_media(args.db)
    from .db import open_db

    open_db(args.db, must_exist=True).dispose()  # a mistyped --db fails here, not as an empty survey
    print(f"survey on http://{args.host}:{args.port}/ (results view "
          f"{'on at /results' if password else f'off: set {ADMIN_ENV} to enable it'})", file=sys.stderr, flush=True)
    serve(args.db, media, args.host, args.port, password, args.log_level)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .analysis import default_order
    from .report import ReportOptions, build_report, report_json, report_markdown

    rules = _rules(args)
    order = args.order.split(",") if args.order else None
    fast_ms = args.fast_ms
    if args.votes:
        from .votes import read_votes_csv

        votes = read_votes_csv(args.votes)
        source, title = f"votes file {args.votes}", "Survey report"
        rules_source = "command line" if rules else "none declared"
    else:
        from .create import find_study
        from .db import open_db
        from .votes import votes_from_db

        db = open_db(args.db, must_exist=True)
        study = find_study(db, args.study)
        with db.session() as session:
            votes = votes_from_db(session, study.id)
        source, title = f"study database {args.db}", f"Survey report: {study.name}"
        declared = study.settings.get("exclusions")
        if rules is None:
            rules = ExclusionRules.from_dict(declared)
            rules_source = f"study settings at creation ({study.settings.get('exclusions_declared_at', '?')})"
        else:
            rules_source = "command line (replacing the study's declared rules: " + \
                "; ".join(ExclusionRules.from_dict(declared).describe()) + ")"
        order = order or default_order(study.methods)
        fast_ms = fast_ms if fast_ms is not None else study.settings.get("fast_ms")
    try:
        thresholds = [float(t) for t in args.thresholds.split(",")]
    except ValueError:
        raise SystemExit(f"error: --thresholds must be numbers separated by commas, got {args.thresholds!r}") from None
    options = ReportOptions(thresholds, args.denominator, args.confidence, args.bootstrap, args.seed, order,
                            float(fast_ms if fast_ms is not None else DEFAULT_FAST_MS), rules or ExclusionRules(),
                            rules_source, apply_exclusions=not args.no_exclusions)
    report = build_report(votes, options, title, source)
    text = report_json(report) if args.json else report_markdown(report)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .create import find_study
    from .db import open_db
    from .votes import votes_from_db, write_votes_csv

    db = open_db(args.db, must_exist=True)
    study = find_study(db, args.study)
    with db.session() as session:
        votes = votes_from_db(session, study.id)
    write_votes_csv(votes, args.out if args.out else sys.stdout)
    if args.out:
        print(f"{len(votes)} votes written to {args.out}", file=sys.stderr)
    return 0


def cmd_power(args: argparse.Namespace) -> int:
    from .power import PAPER_ANSWERS_PER_PAIR, PAPER_FIRST_SHARE, PAPER_TIE_RATE, required_sample_size

    if args.paper:
        p1, tie, per_pair = PAPER_FIRST_SHARE, PAPER_TIE_RATE, PAPER_ANSWERS_PER_PAIR
    else:
        p1, tie, per_pair = args.effect, args.tie_rate, args.answers_per_pair
    plan = required_sample_size(p1, args.alpha, args.power, tie, per_pair, args.icc)
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2))
        return 0
    print(f"Exact two-sided sign test, alpha {plan.alpha}, power {plan.power:.0%}, true first-method share of "
          f"decisive answers {plan.p1:.3f}:")
    print(f"  decisive answers needed: {plan.decisive_answers} (achieved power {plan.achieved_power:.3f}; normal "
          f"approximation {plan.decisive_answers_normal_approx})")
    print(f"  total answers with {plan.tie_rate:.1%} Same answers and design effect {plan.design_effect:.2f}: "
          f"{plan.total_answers}")
    if plan.pairs is not None:
        print(f"  pairs at {plan.answers_per_pair:g} answers per pair: {plan.pairs}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from .create import study_counts
    from .db import open_db
    from .models import Study

    db = open_db(args.db, must_exist=True)
    with db.session() as session:
        studies = session.scalars(select(Study).order_by(Study.id)).all()
    if not studies:
        print("no studies")
    for s in studies:
        print(f"{s.id}\t{s.name}\tmethods {', '.join(s.methods)}\t{study_counts(db, s.id)}")
    return 0


COMMANDS = {"init": cmd_init, "create": cmd_create, "invite": cmd_invite, "open-link": cmd_open_link,
            "serve": cmd_serve, "report": cmd_report, "export": cmd_export, "power": cmd_power, "info": cmd_info}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; user errors end with ``error: ...`` and exit status 2."""
    from .analysis import AnalysisError
    from .create import StudyError
    from .db import SurveyDBError
    from .flow import FlowError
    from .votes import VotesError

    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (StudyError, VotesError, AnalysisError, SurveyDBError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FlowError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2


__all__ = ["build_parser", "main"]
