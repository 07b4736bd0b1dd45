"""Writes the golden inputs of tests/test_cm_benchmarks.py (README.md here says how the outputs were made):
keys in the ASVspoof 2021 full-keys layout (keys/LA/CM, keys/LA/ASV + ASVTorch_Kaldi/score.txt, keys/DF/CM)
and synthetic CM score files `trial score` for them. Run from the repository root:

    python tests/data/asvspoof2021/make_inputs.py tests/data/asvspoof2021
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from data.synthetic.cm_benchmarks import (  # noqa: E402
    DF_CM_KEYS,
    LA_ASV_KEYS,
    LA_ASV_SCORES,
    LA_CM_KEYS,
    df_key_lines,
    la_asv_lines,
    la_key_lines,
    plan_df,
    plan_la,
)

N_TRIALS = 3000
N_SPEAKERS = 20


def _scores(trials: list, codecs: list[str], seed: int) -> list[str]:
    """Bona fide around +2, spoofs around -2 with a shift per attack and per codec; two decimals, so that
    many scores tie (the EER's and t-DCF's tie handling is compared too)."""
    rng = np.random.default_rng(seed)
    lines = []
    for trial in trials:
        codec = codecs.index(trial.conditions["codec"])
        if trial.attack is None:
            value = 2.0 - 0.25 * codec + rng.normal(0, 1.2)
        else:
            value = -2.0 + 0.3 * (int(trial.attack[1:]) - 13) + 0.2 * codec + rng.normal(0, 1.5)
        lines.append(f"{trial.utterance} {value:.2f}")
    return lines


def main(out: Path) -> None:
    from data.corpora.asvspoof2021 import DF_CODECS, LA_CODECS

    la = plan_la(N_TRIALS, N_SPEAKERS, seed=2021)
    df = plan_df(N_TRIALS, N_SPEAKERS, seed=2021)
    asv_keys, asv_scores = la_asv_lines(la, N_SPEAKERS, seed=2021)
    files = {LA_CM_KEYS: la_key_lines(la), LA_ASV_KEYS: asv_keys, LA_ASV_SCORES: asv_scores,
             DF_CM_KEYS: df_key_lines(df), Path("scores_LA.txt"): _scores(la, list(LA_CODECS), 1),
             Path("scores_DF.txt"): _scores(df, list(DF_CODECS), 2)}
    for path, lines in files.items():
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        (out / path).write_text("".join(line + "\n" for line in lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
