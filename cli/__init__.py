"""Command-line pieces shared by the front doors (``python -m app``, ``python -m train.*``).

Argparse lives here and in the front doors, never in ``engine/``. Depends on ``engine`` only;
``app`` and ``train`` import it (they may not import each other).
"""
