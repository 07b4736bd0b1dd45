"""ASVspoof 5 metrics (metrics.asvspoof5, metrics.asvspoof5_tables): the official package's golden numbers,
hand-computed tiny cases, an independent t-EER oracle, missing-condition cells and bad input."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_run import run_here

from metrics import (
    ASVSPOOF5_ASV_RATES,
    ASVErrorRates,
    MetricError,
    asv_rates_at_eer,
    asvspoof5,
    min_tdcf_asvspoof5,
    t_eer,
    track1_metrics,
    track1_table,
    track2_metrics,
    track2_table,
)
from metrics.asvspoof5_tables import POOLED

# README section 6b: absolute tolerances. t-EER is checked in the package's percent.
TOLERANCE = {"a_dcf": 1e-9, "min_dcf": 1e-9, "eer": 1e-9, "act_dcf": 1e-9, "min_tdcf": 1e-9,
             "cllr": 1e-6, "t_eer_percent": 1e-6}
HAND = 1e-12  # hand-computed values: exact up to float rounding
NOT_CASES = {"package", "seed"}  # provenance entries of the golden JSON


def ours(result: dict, golden_name: str) -> float | None:
    """Our value for a golden metric name (the package's t-EER is in percent, ours a fraction)."""
    if golden_name == "t_eer_percent":
        return None if result["t_eer"] is None else result["t_eer"] * 100
    return result[golden_name]


@pytest.fixture(scope="module")
def golden(golden_json):
    return golden_json("asvspoof5_metrics.json")


@pytest.fixture(scope="module")
def trials(fixtures):
    with np.load(fixtures / "golden" / "asvspoof5_metrics.npz") as archive:
        return {name: archive[name] for name in archive.files}


def track2_args(t: dict) -> tuple:
    return t["cm_score"], t["asv_score"], t["sasv_score"], t["cm_key"], t["asv_key"]


# Golden JSON key -> our call on the golden trials (README section 6b, "package call").
POOLED_CASES = {
    "track2_pooled": lambda t: track2_metrics(*track2_args(t)),
    "track2_sasv_only_pooled": lambda t: track2_metrics(None, None, t["sasv_score"], None, t["asv_key"]),
    "track2_pooled_with_asv_org": lambda t: track2_metrics(
        *track2_args(t), asv_scores_org=t["asv_score"], asv_keys_org=t["asv_key"]),
    "track1_pooled": lambda t: track1_metrics(t["cm_score"], t["cm_key"]),
}
FULL_CASES = {
    "track1_full": lambda t: track1_table(t["cm_score"], t["cm_key"], t["attack"], t["codec"]),
    "track2_full": lambda t: track2_table(*track2_args(t), t["attack"], t["codec"]),
}


# ------------------------------------------------------------------------------------ goldens


def test_every_golden_case_is_checked(golden):
    assert set(golden) - NOT_CASES == set(POOLED_CASES) | set(FULL_CASES)


@pytest.mark.parametrize("case", sorted(POOLED_CASES))
def test_pooled_golden(golden, trials, case):
    result = POOLED_CASES[case](trials)
    for name, expected in golden[case].items():
        got = ours(result, name)
        assert abs(got - expected) <= TOLERANCE[name], (case, name, got, expected)
    if case == "track2_sasv_only_pooled":
        assert result["min_tdcf"] is None and result["t_eer"] is None


@pytest.mark.parametrize("case", sorted(FULL_CASES))
def test_full_table_golden(golden, trials, case):
    expected = golden[case]
    table = FULL_CASES[case](trials)
    assert list(table) == expected["attacks"]
    metric_names = [name for name in expected if name not in ("attacks", "codecs")]
    assert metric_names, f"{case}: no metrics in the golden table"
    for i, attack in enumerate(expected["attacks"]):
        assert list(table[attack]) == expected["codecs"], attack
        for j, codec in enumerate(expected["codecs"]):
            cell = table[attack][codec]
            for name in metric_names:
                want = expected[name][i][j]
                if want is None:
                    assert cell is None, (case, attack, codec, name)
                    continue
                got = ours(cell, name)
                assert abs(got - want) <= TOLERANCE[name], (case, attack, codec, name, got, want)


def test_pooled_cells_equal_pooled_metrics(trials):
    t1 = track1_table(trials["cm_score"], trials["cm_key"], trials["attack"], trials["codec"])
    assert t1[POOLED][POOLED] == track1_metrics(trials["cm_score"], trials["cm_key"])
    t2 = track2_table(*track2_args(trials), trials["attack"], trials["codec"],
                      asv_scores_org=trials["asv_score"])
    assert t2[POOLED][POOLED] == track2_metrics(*track2_args(trials), asv_scores_org=trials["asv_score"])


def test_sasv_only_table_has_a_dcf_alone(golden, trials):
    table = track2_table(None, None, trials["sasv_score"], None, trials["asv_key"], trials["attack"], trials["codec"])
    expected = golden["track2_full"]
    for i, attack in enumerate(expected["attacks"]):
        for j, codec in enumerate(expected["codecs"]):
            cell = table[attack][codec]
            assert abs(cell["a_dcf"] - expected["a_dcf"][i][j]) <= TOLERANCE["a_dcf"]
            assert cell["min_tdcf"] is None and cell["t_eer"] is None


def test_missing_conditions_give_none_cells(trials):
    t = dict(trials)
    attacks = sorted(set(t["attack"][t["cm_key"] == "spoof"]))
    codecs = sorted(set(t["codec"]))
    gone_attack, gone_codec, no_nontarget_codec = attacks[0], codecs[1], codecs[2]
    keep = ~((t["attack"] == gone_attack) & (t["codec"] == gone_codec))
    keep &= ~((t["asv_key"] == "nontarget") & (t["codec"] == no_nontarget_codec))
    t = {name: values[keep] for name, values in t.items()}
    # A codec seen only in bona fide trials: a Track 1 column without spoofs.
    bona_only = t["codec"].copy()
    bona_only[np.flatnonzero(t["cm_key"] == "bonafide")[:50]] = "Z99"

    one = track1_table(t["cm_score"], t["cm_key"], t["attack"], bona_only)
    assert one[gone_attack][gone_codec] is None
    assert all(one[row]["Z99"] is None for row in one)
    two = track2_table(*track2_args(t), t["attack"], t["codec"])
    assert two[gone_attack][gone_codec] is None
    assert all(two[row][no_nontarget_codec] is None for row in two)  # Track 2 needs nontargets
    assert one[gone_attack][no_nontarget_codec] is not None  # Track 1 does not
    assert two[POOLED][POOLED] is not None and two[gone_attack][POOLED] is not None


# ----------------------------------------------------------------------- by hand (not by the code)


def test_track1_by_hand():
    # bona fide 0, 2, 3; spoof 1, -1, -2, interleaved. Sweep (ascending: s s b s b b): the point that
    # rejects -2, -1, 0 has Pmiss 1/3 = Pfa 1/3 -> EER 1/3. Cost 0.95 Pmiss + 0.5 Pfa is smallest,
    # 1/6, after rejecting -2 and -1 -> min DCF (1/6) / 0.5. Bayes threshold -ln(1.9) = -0.64 misses no
    # bona fide and accepts the spoof 1 -> actDCF 0.5 (1/3) / 0.5.
    scores = [0.0, 1.0, 2.0, -1.0, 3.0, -2.0]
    keys = ["bonafide", "spoof", "bonafide", "spoof", "bonafide", "spoof"]
    cllr = 0.5 * (sum(math.log2(1 + math.exp(-s)) for s in (0.0, 2.0, 3.0)) / 3
                  + sum(math.log2(1 + math.exp(s)) for s in (1.0, -1.0, -2.0)) / 3)
    result = track1_metrics(scores, keys)
    expected = {"eer": 1 / 3, "min_dcf": 1 / 3, "act_dcf": 1 / 3, "cllr": cllr}
    assert result.keys() == expected.keys()
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, abs=HAND), name


def test_a_dcf_by_hand():
    # ASVspoof 5 costs: Ptar 0.9405, Pnon 0.0095, Pspf 0.05, Cmiss 1, Cfa 10, Cfa_spoof 10; normaliser
    # min(10*0.0095 + 10*0.05, 0.9405) = 0.595. Ascending: 0 (spoof), 1 (non), 1.5 (tar), 2 (spoof), 4 (tar).
    # Rejecting 0 and 1 leaves one spoof of two accepted: 10 * 0.05 * 1/2 = 0.25, the minimum.
    scores = [1.5, 4.0, 1.0, 2.0, 0.0]
    keys = ["target", "target", "nontarget", "spoof", "spoof"]
    result = track2_metrics(None, None, scores, None, keys)
    assert result == {"a_dcf": pytest.approx(0.25 / 0.595, abs=HAND), "min_tdcf": None, "t_eer": None}


def test_min_tdcf_by_hand():
    # Error-free ASV except that it accepts half the spoofs: C0 = 0, C1 = 0.9405, C2 = 0.05*10*0.5 = 0.25,
    # default cost 0.25. CM bona fide 0, 2, 3 vs spoof 1, -1, -2: rejecting -2, -1 gives Pmiss 0,
    # Pfa 1/3 -> (0.25 / 3) / 0.25.
    rates = ASVErrorRates(pfa_nontarget=0.0, pmiss_target=0.0, pfa_spoof=0.5)
    assert min_tdcf_asvspoof5([0.0, 2.0, 3.0], [1.0, -1.0, -2.0], rates) == pytest.approx(1 / 3, abs=HAND)


def test_asv_rates_and_package_spoof_quirk_by_hand():
    # ASV targets 2, 3, nontargets 0, 1: the EER sweep point rejecting 0 and 1 has threshold 1 (the last
    # rejected score), so ">= 1" accepts nontarget 1: Pfa 1/2, Pmiss 0. One spoof in four is below 1.
    scores = [2.0, 3.0, 0.0, 1.0, 0.5, 1.5, 2.5, 3.5]
    keys = ["target"] * 2 + ["nontarget"] * 2 + ["spoof"] * 4
    assert asv_rates_at_eer(scores, keys) == ASVErrorRates(0.5, 0.0, 0.25)  # the package passes the miss rate
    assert asv_rates_at_eer(scores, keys, package_spoof_quirk=False) == ASVErrorRates(0.5, 0.0, 0.75)

    # Those rates in a Track 2 call: C0 = 0.0095*10*0.5 = 0.0475, C1 = 0.9405 - 0.0475, C2 = 0.05*10*0.25
    # = 0.125; CM as in test_min_tdcf_by_hand: min at Pmiss 0, Pfa 1/3.
    cm = [0.0, 2.0, 3.0, 1.0, -1.0, -2.0]
    trial_keys = ["target", "target", "nontarget", "spoof", "spoof", "spoof"]
    cm_keys = ["bonafide"] * 3 + ["spoof"] * 3
    asv = [3.0, 2.5, 0.0, 1.0, 2.0, -1.0]
    result = track2_metrics(cm, asv, asv, cm_keys, trial_keys, asv_scores_org=scores, asv_keys_org=keys)
    assert result["min_tdcf"] == pytest.approx((0.0475 + 0.125 / 3) / (0.0475 + 0.125), abs=HAND)
    assert result["t_eer"] == t_eer(cm, asv, trial_keys)


def test_t_eer_by_hand():
    # Trials (ASV, CM): target (2, 2), nontarget (0, 3), spoofs (3, 0) and (1, 4).
    # ASV point 0 (accept all): Pmiss_asv 0, Pfa_non 1, Pfa_spf 1. CM points (Pmiss, Pfa): (0, 1),
    # (0, 1/2), (1/2, 1/2), (1, 1/2), (1, 0). Tandem miss = Pmiss_cm, tandem fa = (1 - Pmiss_cm)/2 + Pfa_cm/2:
    # equal at CM point 2 (1/2 each), where Pfa_non/Pfa_spf = 1 = Pfa_cm/(1 - Pmiss_cm): the exact crossing,
    # t-EER = Pfa_spf * Pfa_cm = 1/2.
    assert t_eer([2.0, 3.0, 0.0, 4.0], [2.0, 0.0, 3.0, 1.0], ["target", "nontarget", "spoof", "spoof"]) == 0.5


# ------------------------------------------------------------------------- t-EER oracle


def oracle_t_eer(cm, asv, keys) -> float:
    """The concurrent t-EER by explicit loops over sorted trials (Python's sort is stable)."""
    classes = {"target": 0, "nontarget": 1, "spoof": 2}
    n = [sum(1 for k in keys if classes[k] == c) for c in range(3)]
    asv_points = [(0.0, 1.0, 1.0)]
    rejected = [0, 0, 0]
    for _, c in sorted((s, classes[k]) for s, k in zip(asv, keys)):
        rejected[c] += 1
        asv_points.append((rejected[0] / n[0], 1 - rejected[1] / n[1], 1 - rejected[2] / n[2]))
    n_bona = n[0] + n[1]
    cm_points = [(0.0, 1.0)]
    bona_rejected = spoof_rejected = 0
    for _, is_spoof in sorted((s, classes[k] == 2) for s, k in zip(cm, keys)):
        spoof_rejected += is_spoof
        bona_rejected += not is_spoof
        cm_points.append((bona_rejected / n_bona, (n[2] - spoof_rejected) / n[2]))
    best, value = math.inf, None
    for miss_asv, fa_non, fa_spf in asv_points:
        if not miss_asv < 0.5 * fa_non + 0.5 * fa_spf:
            continue
        gaps = [abs(m + (1 - m) * miss_asv - (0.5 * (1 - m) * fa_non + 0.5 * f * fa_spf)) for m, f in cm_points]
        m, f = cm_points[gaps.index(min(gaps))]
        with np.errstate(divide="ignore", invalid="ignore"):
            crit = abs(np.float64(fa_non) / fa_spf - np.float64(f) / (1 - m))
        if crit < best:
            best, value = crit, fa_spf * f
    return value


@pytest.mark.parametrize("seed", range(6))
def test_t_eer_matches_loop_oracle(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(6, 60))
    keys = np.array(["target", "nontarget", "spoof"] * 2 + list(rng.choice(["target", "nontarget", "spoof"], n - 6)))
    asv = np.round(rng.normal(size=n) + (keys == "target") * 2 + (keys == "spoof"), 1 if seed % 2 else 3)
    cm = np.round(rng.normal(size=n) + (keys != "spoof") * 1.5, 1 if seed % 2 else 3)
    expected = oracle_t_eer(cm.tolist(), asv.tolist(), keys.tolist())
    assert t_eer(cm, asv, keys) == pytest.approx(expected, abs=HAND)
    monkeypatch.setattr(asvspoof5, "_BLOCK_ELEMENTS", 3 * (n + 1))  # several blocks: first minimum still wins
    monkeypatch.setattr(asvspoof5, "_closest_cm_points", asvspoof5._closest_cm_points_scan)
    assert t_eer(cm, asv, keys) == pytest.approx(expected, abs=HAND)


def _operating_points(cm: np.ndarray, asv: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, ...]:
    """The t-EER's CM and ASV curves, written out here from their definitions (per-sample sweeps)."""
    counts = np.bincount(codes, minlength=3)
    order = np.lexsort((codes, asv))
    sorted_codes = codes[order]
    pmiss_asv = np.concatenate(([0.0], np.cumsum(sorted_codes == 0) / counts[0]))
    pfa_non = np.concatenate(([1.0], 1 - np.cumsum(sorted_codes == 1) / counts[1]))
    pfa_spf = np.concatenate(([1.0], 1 - np.cumsum(sorted_codes == 2) / counts[2]))
    spoof = (codes == 2)[np.lexsort(((codes == 2), cm))]
    pmiss_cm = np.concatenate(([0.0], np.cumsum(~spoof) / np.count_nonzero(codes != 2)))
    pfa_cm = np.concatenate(([1.0], 1 - np.cumsum(spoof) / counts[2]))
    return pmiss_cm, pfa_cm, pmiss_asv, pfa_non, pfa_spf


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(3, 300), st.sampled_from([0, 1, 2, 10]))
def test_t_eer_bisection_picks_the_full_scans_points(seed, n, decimals):
    """The O(log n) search for each ASV point's closest CM point gives the full scan's (t-EER, ASV index,
    CM index) exactly, on tied, saturated and one-sided scores alike."""
    rng = np.random.default_rng(seed)
    codes = np.concatenate(([0, 1, 2], rng.choice(3, size=n - 3, p=rng.dirichlet([1, 1, 1]))))
    asv = rng.normal(size=n) + codes * rng.normal()
    cm = rng.normal(size=n) + (codes == 2) * rng.normal()
    if decimals:
        asv, cm = np.round(asv * decimals) / decimals, np.round(cm * decimals) / decimals
    if seed % 5 == 0:
        cm[:] = 1.0  # a saturated CM: every CM point but the first two ties
    curves = _operating_points(cm, asv, codes)
    assert asvspoof5._teer_search(*curves) == asvspoof5._teer_search(*curves, full_scan=True)


# ---------------------------------------------------------------------------- bad input

T1_SCORES, T1_KEYS = [0.5, 1.5, -1.0, 2.0], ["bonafide", "bonafide", "spoof", "spoof"]
T2_KEYS = ["target", "nontarget", "spoof", "spoof"]
T2_CM_KEYS = ["bonafide", "bonafide", "spoof", "spoof"]
T2 = ([0.5, 1.5, -1.0, 2.0], [2.0, 0.1, 1.0, 0.2], [2.5, 1.6, 0.0, 2.2], T2_CM_KEYS, T2_KEYS)
LABELS = (["bonafide", "bonafide", "A01", "A02"], ["-", "-", "C1", "C1"])

BAD_INPUT = {
    "track1 without spoofs": (lambda: track1_metrics([0.1, 0.2], ["bonafide", "bonafide"]), "no spoof trials"),
    "track1 NaN": (lambda: track1_metrics([0.1, float("nan"), 0.3], ["bonafide", "spoof", "spoof"]), "NaN/inf"),
    "track1 length mismatch": (lambda: track1_metrics(T1_SCORES, T1_KEYS[:3]), "mismatched lengths"),
    "track1 unknown key": (lambda: track1_metrics(T1_SCORES, ["bona-fide", *T1_KEYS[1:]]), "unknown key"),
    "track1 2-D scores": (lambda: track1_metrics([T1_SCORES], [T1_KEYS]), "1-D"),
    "track2 inf SASV score": (lambda: track2_metrics(*T2[:2], [2.5, float("inf"), 0.0, 2.2], *T2[3:]), "NaN/inf"),
    "track2 without nontargets": (
        lambda: track2_metrics(None, None, [1.0, 2.0, 3.0], None, ["target", "spoof", "spoof"]), "no nontarget"),
    "track2 CM length": (lambda: track2_metrics(T2[0][:3], *T2[1:]), "mismatched lengths"),
    "track2 unknown key": (lambda: track2_metrics(*T2[:4], ["target", "impostor", "spoof", "spoof"]), "unknown key"),
    "track2 keys disagree": (
        lambda: track2_metrics(*T2[:3], ["bonafide", "spoof", "spoof", "spoof"], T2_KEYS), "disagree at position 1"),
    "track2 org keys alone": (lambda: track2_metrics(*T2, asv_keys_org=T2_KEYS), "without asv_scores_org"),
    "track2 binary CM scores": (lambda: track2_metrics([1.0, 1.0, 0.0, 0.0], *T2[1:]), "fewer than 3 distinct"),
    "t-DCF error-free ASV": (
        lambda: min_tdcf_asvspoof5([1.0, 2.0], [0.0], ASVErrorRates(0.0, 0.0, 0.0)), "undefined"),
    "table label length": (lambda: track1_table(T1_SCORES, T1_KEYS, LABELS[0][:3], LABELS[1]), "mismatched lengths"),
    "table pooled label": (lambda: track1_table(T1_SCORES, T1_KEYS, LABELS[0], ["-", "-", POOLED, "C1"]), "reserved"),
    "table bona fide with spoof attack": (
        lambda: track2_table(*T2, ["A01", "bonafide", "A01", "A02"], LABELS[1]), "bona fide trial 0"),
    "table org length": (lambda: track2_table(*T2, *LABELS, asv_scores_org=[1.0, 2.0]), "mismatched lengths"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_raises_one_line_metric_error(case):
    call, match = BAD_INPUT[case]
    with pytest.raises(MetricError, match=match) as caught:
        call()
    assert "\n" not in str(caught.value)


def test_builtin_asv_rates_are_the_packages():
    assert ASVSPOOF5_ASV_RATES == ASVErrorRates(0.01881016557566423, 0.01880141010575793, 0.4607082907604729)


# -------------------------------------------------------------------------------- bench


def test_bench_prints_one_json_line_without_package(tmp_path):
    bench = asvspoof5.__file__.replace("metrics/asvspoof5.py", "bench/bench_metrics.py")
    result = run_here([bench, "5000", "--repeats", "1", "--asvspoof5-only"], cwd=tmp_path)  # as `python ...`
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["n_trials"] == 5000 and summary["package_s"] is None
    assert set(summary["ours_s"]) == {"track1", "track2", "track2_asv_org", "track2_sasv_only"}
    assert all(seconds > 0 for seconds in summary["ours_s"].values())
