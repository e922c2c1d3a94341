"""python -m app: the browser lab (and the survey at /survey) on one server.

Examples::

    python -m app                                   # the default shipped bundle, http://127.0.0.1:7860
    python -m app --bundle fashion-mnist            # another shipped bundle, by name (python -m train.bundle list)
    python -m app --bundle /path/to/bundle --port 8000
    python -m app --preset-set imagenet128 --denoiser /ckpt/128x128_diffusion.pt \\
        --guide vanilla=/ckpt/128x128_classifier.pt --guide robust=/ckpt/robust_classifier_128.pt --precision fp16
    RCG_ADMIN_PASSWORD=... RCG_LAB_PASSWORD=... python -m app --host 0.0.0.0 --survey-db survey.db
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys
from typing import Sequence

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # also set by app/__init__.py; never phone home
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from survey.config import ADMIN_PASSWORD_ENV, LAB_PASSWORD_ENV, SURVEY_DB_ENV  # one name per secret, lab and survey

ADMIN_ENV = (ADMIN_PASSWORD_ENV,)  # the deprecated SURVEY_ADMIN_PASSWORD is still read, with a note
EPILOG = f"""\
Pages: the lab at /, the survey's rater pages at /survey/r/<invite>, its results at
/survey/results (HTTP Basic, the admin password; off without one), /healthz.
On a non-loopback --host (one that others can reach) the lab needs --lab-password /
{LAB_PASSWORD_ENV}, survey on or off, or an explicit --public-lab; so raters never see it.
Privacy: GRADIO_ANALYTICS_ENABLED=False is forced, no share link is ever made, nothing
is downloaded; checkpoints load with torch.load(weights_only=True).
"""


def build_parser() -> argparse.ArgumentParser:
    from engine.model_options import MODEL_OPTIONS, MODEL_OPTIONS_TITLE

    p = argparse.ArgumentParser(prog="python -m app", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    s = p.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 for all; default 127.0.0.1)")
    s.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    s.add_argument("--concurrency", type=int, default=2,
                   help="sampling / attack jobs that run at once, so one long run does not hold up everyone; more "
                        "wait in the queue. The inspector and display controls have their own slots (default 2)")
    s.add_argument("--queue-size", type=int, default=32, help="jobs that may wait in the queue (default 32)")
    s.add_argument("--lab-password", default=None,
                   help=f"password for the lab pages (any user name); or set {LAB_PASSWORD_ENV}. Keeps survey raters "
                        "and others out of the lab; required on a non-loopback --host unless --public-lab")
    s.add_argument("--public-lab", action="store_true",
                   help="serve the lab without a password on a non-loopback --host (anyone who can reach the "
                        "server, survey raters included, can then use the lab and its compute)")
    s.add_argument("--log-level", default="warning", help="uvicorn log level (default warning)")
    models = p.add_argument_group(MODEL_OPTIONS_TITLE)
    for flag, kwargs in MODEL_OPTIONS:
        models.add_argument(flag, **kwargs)
    m = p.add_argument_group("device and limits")
    m.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N (default auto)")
    m.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: min(4, cores))")
    m.add_argument("--max-images", type=int, default=64, help="images per run: seeds x columns (default 64)")
    m.add_argument("--max-steps", type=int, default=1000, help="sampling steps per run (default 1000)")
    m.add_argument("--run-dir", default=None, help="where run downloads are written (default: a temporary folder)")
    m.add_argument("--keep-runs", type=int, default=10, help="runs kept in memory for the stability view (default 10)")
    m.add_argument("--lock-models", action="store_true", help="disable loading other models from the Models tab")
    v = p.add_argument_group("survey (served at /survey; see python -m survey --help)")
    v.add_argument("--survey-db", default=os.environ.get(SURVEY_DB_ENV, "survey.db"),
                   help=f"SQLAlchemy URL or SQLite file of the survey (default survey.db or {SURVEY_DB_ENV})")
    v.add_argument("--survey-media", default=None, help="folder of the study images (default <db>_media)")
    v.add_argument("--admin-password", default=None,
                   help=f"enables the survey results at /survey/results; prefer the environment variable "
                        f"{ADMIN_PASSWORD_ENV} (a command-line password is visible to other users in ps)")
    v.add_argument("--no-survey", action="store_true", help="do not serve the survey")
    return p


def no_models_message(error: str) -> str:
    from engine.bundles import DEFAULT_BUNDLE_DIR

    return (f"No models to load: {error}\n\n"
            f"The default shipped bundle belongs in {DEFAULT_BUNDLE_DIR} (bundle.json + model files) and is not there.\n"
            "Point the lab at models with one of:\n"
            "  python -m app --bundle NAME                   (a shipped bundle: python -m train.bundle list)\n"
            "  python -m app --bundle /path/to/bundle_folder\n"
            "  python -m app --preset-set imagenet128 --denoiser /ckpt/128x128_diffusion.pt \\\n"
            "      --guide vanilla=/ckpt/128x128_classifier.pt --guide robust=/ckpt/robust_classifier_128.pt\n"
            "  python -m app --denoiser gd-128-denoiser:/ckpt/128x128_diffusion.pt --guide NAME=PRESET:PATH ...\n"
            "  python -m app --diffusers-dir /path/to/diffusers_pipeline --guide NAME=runs/guide/model.pt ...\n"
            "or build the bundle with python -m train.* and python -m train.bundle add (see the README).")


def open_bundle(args: argparse.Namespace):
    """The models the options name, or SystemExit with a message saying how to point at some."""
    from engine.bundles import DEFAULT_BUNDLE_DIR
    from engine.checkpoints import BundleError
    from engine.model_specs import open_models
    from engine.precision import PrecisionError

    try:
        return open_models(args.bundle, denoiser=args.denoiser, guides=args.guide, preset_set=args.preset_set,
                           device=args.device, precision=args.precision, diffusers_dir=args.diffusers_dir)
    except PrecisionError as exc:
        raise SystemExit(f"Cannot load the models: {exc}") from None
    except (BundleError, KeyError) as exc:
        text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        default_requested = not (args.bundle or args.denoiser or args.guide or args.preset_set or args.diffusers_dir)
        if default_requested and not (DEFAULT_BUNDLE_DIR / "bundle.json").is_file():
            raise SystemExit(no_models_message(text)) from None
        raise SystemExit(f"Cannot load the models: {text}\n(see python -m app --help: --bundle, --denoiser, --guide, "
                         "--preset-set, --diffusers-dir)") from None


def _loopback_address(text: str) -> bool:
    address = ipaddress.ip_address(text.split("%", 1)[0])  # fe80::1%eth0: the zone names an interface
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def is_loopback(host: str) -> bool:
    """True when only this machine can reach ``host``: a loopback address (127.0.0.0/8,
    ::1), or a name every address of which is one (e.g. localhost). Decided by parsing
    the address, never by its spelling ("127.example.com" is a name like any other); a
    name that does not resolve counts as reachable by others."""
    text = host.strip().strip("[]")
    try:
        return _loopback_address(text)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(text, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False
    addresses = {info[4][0] for info in infos}
    try:
        return bool(addresses) and all(_loopback_address(a) for a in addresses)
    except ValueError:
        return False


def check_lab_exposure(host: str, survey_on: bool, lab_password: str | None, public_lab: bool) -> None:
    """Refuse to serve the lab without a password on a host others can reach (with the
    survey on, its raters among them) unless ``--public-lab`` says it is meant."""
    if lab_password or public_lab or is_loopback(host):
        return
    who = "survey raters and anyone else who reaches it" if survey_on else "anyone who reaches it"
    raise SystemExit(
        f"Refusing to serve the lab without a password on --host {host}, which is not a loopback address: "
        f"{who} could open the lab at / and run jobs on this machine. Set a lab password (--lab-password or "
        f"{LAB_PASSWORD_ENV}), use --host 127.0.0.1 to serve only this machine, or pass --public-lab if everyone "
        "who reaches this server may use the lab.")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("concurrency", "queue_size", "max_images", "max_steps", "keep_runs"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1")
    from survey.config import admin_password, from_env

    if args.lab_password:
        print(f"warning: a password given with --lab-password can be read by other users of this machine (ps); "
              f"set {LAB_PASSWORD_ENV} instead", file=sys.stderr, flush=True)
    lab_password = args.lab_password or from_env(LAB_PASSWORD_ENV)
    check_lab_exposure(args.host, not args.no_survey, lab_password, args.public_lab)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("app").setLevel(logging.INFO)
    import torch

    torch.set_num_threads(args.threads or max(1, min(4, os.cpu_count() or 1)))
    from engine.allocator import keep_freed_memory

    keep_freed_memory()  # on the main thread, before the server's threads sample (engine.allocator)
    bundle = open_bundle(args)

    from .server import SurveyOptions, create_server, serve
    from .state import LabState, Limits

    admin = admin_password(args.admin_password)
    state = LabState(bundle, limits=Limits(max_images=args.max_images, max_steps=args.max_steps),
                     run_dir=args.run_dir, keep_runs=args.keep_runs, allow_model_loading=not args.lock_models,
                     device=args.device)
    app = create_server(state, concurrency=args.concurrency, queue_size=args.queue_size,
                        survey=SurveyOptions(args.survey_db, args.survey_media, admin, not args.no_survey),
                        lab_password=lab_password)
    print(f"Lab: http://{args.host}:{args.port}/  (models: {bundle.name} on {bundle.device}; "
          f"survey: {app.state.survey_note})", flush=True)
    try:
        serve(app, args.host, args.port, args.log_level)
    finally:
        state.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
