"""Generate the embedded synthetic demo corpus when a config asks for it."""
from __future__ import annotations

from pathlib import Path

from engine.config import Config


def ensure_demo_corpus(config: Config, *, progress: bool = True) -> Path | None:
    """Generate `demo_corpus.root` when the config names one and it is missing or incomplete."""
    settings = config["demo_corpus"]
    if not settings["root"]:
        return None
    from data.synthetic import CorpusSpec, corpus_is_complete, generate_corpus

    root = Path(settings["root"])
    seed = settings["seed"]
    spec = CorpusSpec.tiny(seed) if settings["size"] == "tiny" else CorpusSpec(seed=seed)
    # A corpus of another size, seed or generator version is regenerated, not silently reused.
    if not corpus_is_complete(root, spec):
        print(f"generating the synthetic demo corpus in {root} ...")
        generate_corpus(root, spec, progress=progress)
    return root
