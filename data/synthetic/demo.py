"""The corpus a config's `demo_corpus` section asks for, in either layout, generated when missing."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .asvspoof5 import Asvspoof5Spec, generate_asvspoof5_corpus
from .corpus import CorpusSpec, corpus_is_complete, generate_corpus

LAYOUTS = ("asvspoof2019", "asvspoof5")


def ensure_demo_corpus(settings: Mapping[str, Any], *, progress: bool = True) -> bool:
    """Generate the corpus a config's `demo_corpus` section names, when it is missing or incomplete;
    whether it was generated now."""
    if not settings["root"]:
        return False
    root = Path(settings["root"])
    seed, tiny = settings["seed"], settings["size"] == "tiny"
    if settings.get("layout", "asvspoof2019") == "asvspoof5":
        spec: Any = Asvspoof5Spec.tiny(seed) if tiny else Asvspoof5Spec(seed=seed)
        generate: Any = generate_asvspoof5_corpus
    else:
        spec, generate = (CorpusSpec.tiny(seed) if tiny else CorpusSpec(seed=seed)), generate_corpus
    # A corpus of another layout, size, seed or generator version is regenerated, not silently reused.
    if not corpus_is_complete(root, spec):
        print(f"generating the synthetic demo corpus in {root} ...")
        generate(root, spec, progress=progress)
        return True
    return False
