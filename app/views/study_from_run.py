"""A kept side-by-side run becomes a survey study: the run's chosen columns (their guidance
configs: guide, scale, source, stabiliser, mode), sampler, eta and steps, sampled again for
a chosen number of fresh (class, seed) pairs and stored in the survey this server serves,
each image with the config that regenerates it (``survey.create.study_from_run``, the
same code as ``survey create --from-run run_config.json``).

For admins only: the survey's admin password (``RCG_ADMIN_PASSWORD``). The study is made
in the background, one at a time per server, while the lab stays usable; the panel shows
its progress and, when done, the study's results page (invite links) and how to open a
crowdsourcing link.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import quote

import gradio as gr

from ..errors import EXPECTED, message_of, user_errors
from ..inputs import LabInputError, parse_int
from ..state import LabState, RunRecord, SurveyTarget

log = logging.getLogger("app")
DEFAULT_PAIRS = 20
MAX_PAIRS = 2000
DEFAULT_PER_RATER = 40
BATCH = 8  # units sampled at once: progress moves every BATCH pairs
HELP = ("Turn a kept run into a pairwise human-preference study (Left / Right / Same) in this server's survey: "
        "the chosen columns with the run's guidance settings, sampler and steps, sampled again for new "
        "(class, seed) pairs; each pair shares class and seed. Needs the survey's admin password "
        "(RCG_ADMIN_PASSWORD when the lab started). The same as `survey create --from-run run_config.json`.")


@dataclass
class StudyJob:
    """A study being made in the background."""

    id: str
    name: str
    run_id: str
    methods: list[str]
    total: int
    done: int = 0
    state: str = "running"  # running | done | failed
    message: str = ""
    study_id: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0


class StudyJobs:
    """The lab's study jobs: each runs in its own thread, one at a time per server."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, StudyJob] = {}
        self._ids = itertools.count(1)

    def start(self, name: str, run_id: str, methods: list[str], total: int,
              work: Callable[[StudyJob], dict[str, Any]]) -> StudyJob:
        """Run ``work(job)`` in a thread; it returns the study's id and counts."""
        with self._lock:
            busy = next((j for j in self._jobs.values() if j.state == "running"), None)
            if busy is not None:
                raise LabInputError(f"study {busy.name!r} is still being made ({busy.done}/{busy.total} pairs); "
                                    "wait until it is done")
            job = StudyJob(f"study-{next(self._ids)}", name, run_id, methods, total)
            self._jobs[job.id] = job

        def run() -> None:
            try:
                made = work(job)
                job.study_id, job.counts, job.state = made["study_id"], made["counts"], "done"
            except (*EXPECTED, OSError) as exc:  # StudyError (a ValueError) included
                job.state, job.message = "failed", message_of(exc)
            except Exception as exc:  # a bug or a broken model: log it, tell the admin briefly
                log.exception("making study %r failed", job.name)
                job.state, job.message = "failed", f"unexpected error ({exc.__class__.__name__}: {message_of(exc)})"
            job.seconds = time.monotonic() - job.started

        threading.Thread(target=run, name=f"rcg-{job.id}", daemon=True).start()
        return job

    def get(self, job_id: str | None) -> StudyJob:
        with self._lock:
            job = self._jobs.get(str(job_id or ""))
        if job is None:
            raise LabInputError(f"no study job {job_id!r} on this server")
        return job


def admitted(state: LabState, password: Any) -> SurveyTarget:
    """The survey to write into, when ``password`` is its admin password."""
    target = state.survey
    if target is None:
        raise LabInputError("the survey is off on this server (--no-survey, or its database could not be opened), "
                            "so no study can be made here")
    if not target.admin_password:
        raise LabInputError("making a study needs the survey's admin password: start the lab with "
                            "RCG_ADMIN_PASSWORD set")
    if not secrets.compare_digest(str(password or "").encode(), target.admin_password.encode()):
        raise LabInputError("wrong admin password")
    return target


def start_study(state: LabState, jobs: StudyJobs, run_value: Any, columns: Any, pairs: Any, name: Any,
                per_rater: Any, password: Any) -> StudyJob:
    """Check everything that can be checked at once, then make the study in the background."""
    from survey.create import StudyError, StudyPlan, check_run_against_bundle, read_run_config, study_counts, \
        study_from_run, validate_name

    target = admitted(state, password)
    record: RunRecord = state.get_run(run_value)
    n = parse_int(pairs if pairs not in (None, "") else DEFAULT_PAIRS, "pairs", 1, MAX_PAIRS)
    per = parse_int(per_rater if per_rater not in (None, "") else DEFAULT_PER_RATER, "pairs per rater", 1, 100_000)
    chosen = [str(c) for c in (columns or [])] or None
    seed = secrets.randbelow(2**31 - 1)  # fresh classes and seeds for every study
    try:
        plan = read_run_config(record.folder / "run_config.json", chosen)
        check_run_against_bundle(plan, record.bundle)
        title = validate_name(str(name or "").strip() or f"{record.id} {time.strftime('%Y-%m-%d %H:%M:%S')}")
        study_plan = StudyPlan(per_rater=per, seed=seed)
    except StudyError as exc:
        raise LabInputError(str(exc)) from None

    def work(job: StudyJob) -> dict[str, Any]:
        def progress(done: int, total: int) -> None:
            job.done = int(done)  # the generator reports fractions of a batch for its ETA

        study_id = study_from_run(target.db, target.media_dir, title, plan, record.bundle, n, seed=seed,
                                  study_plan=study_plan, bundle_path=record.bundle.source or None,
                                  batch_size=BATCH, progress=progress)
        return {"study_id": study_id, "counts": study_counts(target.db, study_id)}

    return jobs.start(title, record.id, [c.name for c in plan.configs], n, work)


def results_url(target: SurveyTarget, name: str) -> str:
    return f"{target.path}/results?study={quote(name, safe='')}"


def status_of(state: LabState, job: StudyJob) -> dict[str, Any]:
    """A job as plain values (the API's answer)."""
    values = {"job": job.id, "state": job.state, "name": job.name, "run": job.run_id, "methods": job.methods,
              "done": job.done, "total": job.total, "message": job.message, "study_id": job.study_id,
              "counts": job.counts, "seconds": round(job.seconds, 1)}
    if job.state == "done" and state.survey is not None:
        values["results_url"] = results_url(state.survey, job.name)
    values["text"] = status_markdown(state, job)  # what the panel shows
    return values


def status_markdown(state: LabState, job: StudyJob) -> str:
    if job.state == "running":
        return (f"Making study **{job.name}** from {job.run_id} ({', '.join(job.methods)}): {job.done}/{job.total} "
                f"pairs sampled, {time.monotonic() - job.started:.0f} s…")
    if job.state == "failed":
        return f"**Could not make study {job.name}:** {job.message}"
    url = results_url(state.survey, job.name) if state.survey is not None else ""
    counts = job.counts
    return (f"Study **{job.name}** (id {job.study_id}) made from {job.run_id} in {job.seconds:.0f} s: "
            f"{counts.get('main_pairs', 0)} pairs of {', '.join(job.methods)}, {counts.get('images', 0)} images.\n\n"
            f"- Results, progress and personal rater links (admin password): [{url}]({url})\n"
            f"- One public link for a crowdsourcing platform (Prolific, MTurk): `survey open-link --study "
            f"'{job.name}' --base-url https://HOST{state.survey.path if state.survey else ''}`")


def column_names(state: LabState, run_value: Any) -> list[str]:
    return [c.name for c in state.get_run(run_value).result.configs]


def build(state: LabState, run_id: gr.State) -> None:
    """The panel, under the side-by-side view; ``run_id`` is that view's latest run."""
    jobs = StudyJobs()
    with gr.Accordion("Survey study from a run (admin)", open=False) as panel:
        gr.Markdown(HELP)
        with gr.Row():
            run_dd = gr.Dropdown(state.run_labels(), label="Run", allow_custom_value=True,
                                 info="a kept run of this server; the latest side-by-side run is chosen for you")
            columns = gr.Dropdown([], value=[], multiselect=True, allow_custom_value=True, label="Methods",
                                  info="the run's columns to compare (at least two; default: all)")
        with gr.Row():
            pairs = gr.Number(DEFAULT_PAIRS, precision=0, label="Pairs", info="new (class, seed) pairs per method pair")
            per_rater = gr.Number(DEFAULT_PER_RATER, precision=0, label="Pairs per rater")
            name = gr.Textbox("", label="Study name", placeholder="default: the run id and the time")
        password = gr.Textbox("", type="password", label="Admin password", elem_id="study-password")
        with gr.Row():
            create_btn = gr.Button("Create survey study", variant="primary", elem_id="study-create")
            list_btn = gr.Button("Refresh runs", size="sm")
        status = gr.Markdown("", elem_id="study-status")
        job_id = gr.Textbox("", visible=False)
        timer = gr.Timer(1.0, active=False)

    def choose(run_value: Any) -> Any:
        try:
            names = column_names(state, run_value)
        except LabInputError:
            return gr.update(choices=[], value=[])
        return gr.update(choices=names, value=names)

    def latest(run_value: Any) -> list[Any]:
        labels = state.run_labels()
        label = next((lab for lab in labels if run_value and lab.split(" ", 1)[0] == run_value), None)
        return [gr.update(choices=labels, value=label), choose(label)]

    @user_errors
    def create(run_value, column_values, pairs_value, name_value, per_rater_value, password_value):
        job = start_study(state, jobs, run_value, column_values, pairs_value, name_value, per_rater_value,
                          password_value)
        return status_markdown(state, job), job.id, gr.Timer(active=True)

    def poll(job: str) -> list[Any]:
        if not job:
            return [gr.skip(), gr.Timer(active=False)]
        current = jobs.get(job)
        return [status_markdown(state, current), gr.Timer(active=current.state == "running")]

    @user_errors
    def study_status(job: str) -> dict[str, Any]:
        """A study job's progress and, when done, its results page."""
        return status_of(state, jobs.get(job))

    for event in (run_id.change, panel.expand):  # a new run, or the panel opened: offer the latest run
        event(latest, run_id, [run_dd, columns], api_visibility="private", concurrency_limit=None)
    run_dd.input(choose, run_dd, columns, api_visibility="private", concurrency_limit=None)
    list_btn.click(lambda: gr.update(choices=state.run_labels()), None, run_dd, api_visibility="private",
                   concurrency_limit=None)
    create_btn.click(create, [run_dd, columns, pairs, name, per_rater, password], [status, job_id, timer],
                     api_name="study_from_run", concurrency_limit=None)
    timer.tick(poll, job_id, [status, timer], api_visibility="private", concurrency_limit=None)
    gr.api(study_status, api_name="study_status", concurrency_limit=None)
