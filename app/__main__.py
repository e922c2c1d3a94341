"""python -m app: the browser lab (and the survey at /survey) on one server.

Examples::

    python -m app                                   # bundled MNIST models, http://127.0.0.1:7860
    python -m app --bundle /path/to/bundle --port 8000
    python -m app --preset-set imagenet128 --denoiser /ckpt/128x128_diffusion.pt \\
        --guide vanilla=/ckpt/128x128_classifier.pt --guide robust=/ckpt/robust_classifier_128.pt --precision fp16
    RCG_ADMIN_PASSWORD=... RCG_LAB_PASSWORD=... python -m app --host 0.0.0.0 --survey-db survey.db
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # also set by app/__init__.py; never phone home
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ADMIN_ENV = ("RCG_ADMIN_PASSWORD", "SURVEY_ADMIN_PASSWORD")
LAB_PASSWORD_ENV = "RCG_LAB_PASSWORD"
LOOPBACK_HOSTS = ("localhost", "::1")
EPILOG = f"""\
Pages: the lab at /, the survey's rater pages at /survey/r/<invite>, its results at
/survey/results (HTTP Basic, the admin password; off without one), /healthz.
Raters never see the lab: on a non-loopback --host with the survey on, the lab needs
--lab-password / {LAB_PASSWORD_ENV} (or an explicit --public-lab).
Privacy: GRADIO_ANALYTICS_ENABLED=False is forced, no share link is ever made, nothing
is downloaded; checkpoints load with torch.load(weights_only=True).
"""


def build_parser() -> argparse.ArgumentParser:
    from engine.cli_options import add_model_args

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
                        "out of the lab; required with the survey on a non-loopback --host unless --public-lab")
    s.add_argument("--public-lab", action="store_true",
                   help="serve the lab without a password on a non-loopback --host even with the survey on "
                        "(anyone who can reach the server, raters included, can then open the lab)")
    s.add_argument("--log-level", default="warning", help="uvicorn log level (default warning)")
    add_model_args(p)
    m = p.add_argument_group("device and limits")
    m.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N (default auto)")
    m.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: min(4, cores))")
    m.add_argument("--max-images", type=int, default=64, help="images per run: seeds x columns (default 64)")
    m.add_argument("--max-steps", type=int, default=1000, help="sampling steps per run (default 1000)")
    m.add_argument("--run-dir", default=None, help="where run downloads are written (default: a temporary folder)")
    m.add_argument("--keep-runs", type=int, default=10, help="runs kept in memory for the stability view (default 10)")
    m.add_argument("--lock-models", action="store_true", help="disable loading other models from the Models tab")
    v = p.add_argument_group("survey (served at /survey; see python -m survey --help)")
    v.add_argument("--survey-db", default=os.environ.get("RCG_SURVEY_DB", "survey.db"),
                   help="SQLAlchemy URL or SQLite file of the survey (default survey.db or RCG_SURVEY_DB)")
    v.add_argument("--survey-media", default=None, help="folder of the study images (default <db>_media)")
    v.add_argument("--admin-password", default=None,
                   help=f"enables the survey results at /survey/results; or set {ADMIN_ENV[0]} (keeps it out of ps)")
    v.add_argument("--no-survey", action="store_true", help="do not serve the survey")
    return p


def no_models_message(error: str) -> str:
    from engine.bundles import DEFAULT_BUNDLE_DIR

    return (f"No models to load: {error}\n\n"
            f"The bundled MNIST models belong in {DEFAULT_BUNDLE_DIR} (bundle.json + model files) and are not there.\n"
            "Point the lab at models with one of:\n"
            "  python -m app --bundle /path/to/bundle_folder\n"
            "  python -m app --preset-set imagenet128 --denoiser /ckpt/128x128_diffusion.pt \\\n"
            "      --guide vanilla=/ckpt/128x128_classifier.pt --guide robust=/ckpt/robust_classifier_128.pt\n"
            "  python -m app --denoiser gd-128-denoiser:/ckpt/128x128_diffusion.pt --guide NAME=PRESET:PATH ...\n"
            "  python -m app --diffusers-dir /path/to/diffusers_pipeline --guide NAME=runs/guide/model.pt ...\n"
            "or build the bundle with python -m train.* and python -m train.bundle add (see the README).")


def open_bundle(args: argparse.Namespace):
    """The models the options name, or SystemExit with a message saying how to point at some."""
    from engine.bundles import DEFAULT_BUNDLE_DIR, BundleError, open_models

    try:
        return open_models(args.bundle, denoiser=args.denoiser, guides=args.guide, preset_set=args.preset_set,
                           device=args.device, precision=args.precision, diffusers_dir=args.diffusers_dir)
    except (BundleError, KeyError) as exc:
        text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        default_requested = not (args.bundle or args.denoiser or args.guide or args.preset_set or args.diffusers_dir)
        if default_requested and not (DEFAULT_BUNDLE_DIR / "bundle.json").is_file():
            raise SystemExit(no_models_message(text)) from None
        raise SystemExit(f"Cannot load the models: {text}\n(see python -m app --help: --bundle, --denoiser, --guide, "
                         "--preset-set, --diffusers-dir)") from None


def is_loopback(host: str) -> bool:
    """True for hosts only this machine can reach (127.x, ::1, localhost)."""
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def check_lab_exposure(host: str, survey_on: bool, lab_password: str | None, public_lab: bool) -> None:
    """Refuse to show the lab to survey raters: a non-loopback host with the survey on
    needs a lab password, or ``--public-lab`` to say it is meant."""
    if survey_on and not lab_password and not public_lab and not is_loopback(host):
        raise SystemExit(
            f"Refusing to serve the lab without a password on --host {host} while the survey is on: survey raters "
            f"could open the lab at /. Set a lab password (--lab-password or {LAB_PASSWORD_ENV}), or pass "
            "--no-survey, or --public-lab if everyone who reaches this server may use the lab.")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("concurrency", "queue_size", "max_images", "max_steps", "keep_runs"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1")
    lab_password = args.lab_password or os.environ.get(LAB_PASSWORD_ENV) or None
    check_lab_exposure(args.host, not args.no_survey, lab_password, args.public_lab)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("app").setLevel(logging.INFO)
    import torch

    torch.set_num_threads(args.threads or max(1, min(4, os.cpu_count() or 1)))
    bundle = open_bundle(args)

    from .server import SurveyOptions, create_server, serve
    from .state import LabState, Limits

    admin = args.admin_password or next((os.environ[k] for k in ADMIN_ENV if os.environ.get(k)), None)
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
