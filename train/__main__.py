"""``python -m train COMMAND ...`` (installed: ``rcg-train COMMAND ...``): one entry point
for the training and evaluation commands; each is also ``python -m train.COMMAND``.

    rcg-train classifier --help
    rcg-train evaluate --bundle mnist --methods vanilla:0.5 robust:1.0
"""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

COMMANDS = {
    "classifier": "train a time-dependent classifier, vanilla or robust (PGD)",
    "diffusion": "train the demo denoiser",
    "judge": "train the judge (an independent clean-image classifier)",
    "evaluate": "FID / precision / recall / judge-accuracy sweeps",
    "steps": "judge FID and accuracy against the number of DDPM / DDIM steps",
    "robustness": "accuracy of classifiers under PGD at chosen timesteps",
    "alignment": "perceptual alignment: targeted-attack transfer of guides to the judge",
    "sample": "write guided samples as guided-diffusion's scripts do (.npz)",
    "bundle": "assemble a model bundle one model at a time",
    "ablation": "compare robust-classifier training settings",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    return ("usage: rcg-train COMMAND [options]   (or: python -m train COMMAND, python -m train.COMMAND)\n\n"
            "commands:\n" + "\n".join(lines) + "\n\nrcg-train COMMAND --help shows a command's options.")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"train.{command}")
    sys.argv[0] = f"rcg-train {command}"
    return module.main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
