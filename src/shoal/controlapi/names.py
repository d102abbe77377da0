"""Random ``adjective_scientist`` names, what Docker gives a service created without a name."""

from __future__ import annotations

import secrets

_LEFT = (
    "agile", "bold", "brave", "bright", "calm", "clever", "cool", "eager", "fervent", "gentle",
    "happy", "jolly", "keen", "kind", "lucid", "merry", "nimble", "noble", "patient", "proud",
    "quick", "quiet", "serene", "sharp", "steady", "sunny", "tender", "vivid", "witty", "zealous",
)
_RIGHT = (
    "agnesi", "banach", "bohr", "cantor", "curie", "darwin", "dirac", "euler", "faraday", "fermi",
    "gauss", "hilbert", "hopper", "hypatia", "kepler", "lamarr", "lovelace", "maxwell", "meitner",
    "newton", "noether", "pascal", "planck", "ramanujan", "riemann", "shannon", "tesla", "turing",
    "volta", "wiles",
)


def random_name() -> str:
    return f"{secrets.choice(_LEFT)}_{secrets.choice(_RIGHT)}"
