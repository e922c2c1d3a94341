"""The browser lab (``python -m app``): a Gradio UI over the engine for robust
classifier guidance (Kawar, Ganz & Elad, TMLR 2023) and GradCheck's gradient-stability
analysis (Vaeth et al. 2024).

Layout: ``__main__`` (command line), ``server`` (FastAPI + survey mount + uvicorn),
``ui`` (the Blocks), ``views/`` (one module per tab), ``state`` (loaded models, kept
runs), ``inputs`` (parsing user input), ``columns`` (the column table), ``render``
(engine results -> pictures, figures, tables), ``downloads`` (run files),
``errors`` (messages instead of stack traces), ``screenshots`` (README pictures).
The app holds no math: every computation is a call into ``engine``.
"""

import os as _os

# No telemetry, whatever the environment says: set before any module here imports gradio.
_os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
