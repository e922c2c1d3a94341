"""Pairwise human preference study of guided-diffusion samples (Kawar, Ganz & Elad 2023,
Section 5.2): storage, study creation, rater flow over HTTP, and the paper's analysis.

Modules, one job each:

- ``models`` / ``db`` / ``migrations``: the SQLAlchemy schema, engine and migrations;
- ``media``: image files under random names; ``create``: studies from the engine,
  ``.npz`` files or folders; ``flow``: invitations, pair assignment, votes;
- ``pages`` / ``web``: the FastAPI rater and results app (``create_survey_app``);
- ``votes``: the votes table (database or CSV); ``analysis``, ``agreement``,
  ``quality``, ``ranking``, ``power``: statistics; ``report``: Markdown / JSON;
- ``cli``: ``python -m survey``.

Nothing heavy is imported here: ``import survey.web`` does not load torch.
"""
