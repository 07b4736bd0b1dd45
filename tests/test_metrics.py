"""metrics/: golden values of the reference implementations, independent oracles, errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn.metrics import roc_curve

from metrics import (
    ADCF_ASVSPOOF5,
    ADCF_DEFAULT,
    LEGACY_2019_COST,
    ADCFCostModel,
    MetricError,
    TDCFCostModel,
    adcf_curve,
    compute_eer,
    min_adcf,
    min_tdcf,
    roc_eer,
    sasv_eers,
    tdcf_curve,
)
from metrics.eer import sort_by_score_then_class

torch.set_num_threads(2)

EER_ABS = 1e-9  # README section 7: brentq result
REL = 1e-12  # README section 7: compute_eer, t-DCF, a-DCF

# compute_eer_extra case -> the classes used as non-targets (concatenated in this order)
EXTRA_NEGATIVES = {"sv": ("nontarget",), "sasv": ("nontarget", "spoof"), "spf": ("spoof",)}

# tDCF golden key -> TDCFResult attribute
TDCF_FIELDS = {
    "min_tDCF": "min_tdcf",
    "argmin_index": "argmin_index",
    "cm_threshold_at_min": "cm_threshold_at_min",
    "eer_cm": "eer_cm",
    "eer_asv": "eer_asv",
    "asv_threshold": "asv_threshold",
    "Pfa_asv": "pfa_asv",
    "Pmiss_asv": "pmiss_asv",
    "Pmiss_spoof_asv": "pmiss_spoof_asv",
    "C1": "c1",
    "C2": "c2",
}
# tiny tDCF case key -> TDCFResult attribute
TDCF_SMALL_FIELDS = {
    "asv_eer": "eer_asv",
    "asv_threshold": "asv_threshold",
    "Pfa_asv": "pfa_asv",
    "Pmiss_asv": "pmiss_asv",
    "Pmiss_spoof_asv": "pmiss_spoof_asv",
    "tDCF_curve": "curve",
    "CM_thresholds": "cm_thresholds",
    "min_tDCF": "min_tdcf",
}


def assert_rel(actual, expected, what: str) -> None:
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual, expected, rtol=REL, atol=0, err_msg=what)


@pytest.fixture(scope="module")
def golden(golden_json):
    return golden_json("metrics_golden.json")


@pytest.fixture(scope="module")
def inputs(fixtures):
    with np.load(fixtures / "golden" / "metrics_inputs.npz") as archive:
        return {name: archive[name] for name in archive.files}


def by_key(inputs, key: str) -> np.ndarray:
    return inputs["sasv_scores"][inputs["sasv_keys"] == key]


# ---------------------------------------------------------------- goldens


def test_sasv_eers_golden(golden, inputs):
    expected = {name: value for name, value in golden["get_all_EERs"].items() if name != "note"}
    result = sasv_eers(inputs["sasv_scores"], list(inputs["sasv_keys"]))
    assert set(result) == set(expected)
    for name, value in expected.items():
        assert abs(result[name] - value) <= EER_ABS, (name, result[name], value)


def test_roc_eer_matches_sasv_eers_subsets(golden, inputs):
    expected = golden["get_all_EERs"]
    target = by_key(inputs, "target")
    nontarget, spoof = by_key(inputs, "nontarget"), by_key(inputs, "spoof")
    assert abs(roc_eer(target, nontarget) - expected["sv_eer"]) <= EER_ABS
    assert abs(roc_eer(target, spoof) - expected["spf_eer"]) <= EER_ABS
    assert abs(roc_eer(target, np.concatenate((spoof, nontarget))) - expected["sasv_eer"]) <= EER_ABS


def test_compute_eer_cm_golden(golden, inputs):
    eer, threshold = compute_eer(inputs["cm_bona"].astype(np.float64), inputs["cm_spoof"].astype(np.float64))
    assert_rel(eer, golden["compute_eer_cm"]["eer"], "eer")
    assert_rel(threshold, golden["compute_eer_cm"]["threshold"], "threshold")


def test_compute_eer_extra_golden(golden, inputs):
    for case, expected in golden["compute_eer_extra"].items():
        negatives = np.concatenate([by_key(inputs, key) for key in EXTRA_NEGATIVES[case]])
        eer, threshold = compute_eer(by_key(inputs, "target"), negatives)
        assert_rel(eer, expected["eer"], f"{case} eer")
        assert_rel(threshold, expected["threshold"], f"{case} threshold")


def test_tdcf_golden(golden, inputs):
    expected = golden["tDCF"]
    # "Cmiss"/"Cfa" of the reference dict are not used by compute_tDCF.
    used = {name: value for name, value in expected["cost_model"].items() if name not in ("Cmiss", "Cfa")}
    assert TDCFCostModel(**used) == LEGACY_2019_COST
    asv = (by_key(inputs, "target"), by_key(inputs, "nontarget"), by_key(inputs, "spoof"))
    args = (*asv, inputs["cm_bona"], inputs["cm_spoof"])
    result = tdcf_curve(*args)
    for key, attribute in TDCF_FIELDS.items():
        assert_rel(getattr(result, attribute), expected[key], key)
    assert result.curve.shape == result.cm_thresholds.shape == (expected["curve_length"],)
    returned = [result.eer_cm * 100, result.min_tdcf]
    assert_rel(returned, expected["calculate_tDCF_EER_return"], "calculate_tDCF_EER")
    assert min_tdcf(*args) == result.min_tdcf


def test_adcf_golden(golden, inputs):
    expected = golden["a_dcf"]
    assert ADCFCostModel(**expected["cost_model"]) == ADCF_DEFAULT
    value, threshold = min_adcf(inputs["sasv_scores"], inputs["sasv_keys"])
    assert_rel(value, expected["min_a_dcf"], "min a-DCF")
    assert_rel(threshold, expected["min_a_dcf_thresh"], "a-DCF threshold")


def check_tiny_eer_case(name: str, case: dict) -> set:
    target, nontarget, spoof = case["target"], case["nontarget"], case["spoof"]
    scores = target + nontarget + spoof
    keys = ["target"] * len(target) + ["nontarget"] * len(nontarget) + ["spoof"] * len(spoof)
    result = sasv_eers(scores, keys)
    for got, want in zip((result["sasv_eer"], result["sv_eer"], result["spf_eer"]), case["get_all_EERs"]):
        assert abs(got - want) <= EER_ABS, (name, result, case["get_all_EERs"])
    assert_rel(compute_eer(target, nontarget), case["compute_eer_target_vs_nontarget"], f"{name} t/nt")
    assert_rel(compute_eer(target, spoof), case["compute_eer_target_vs_spoof"], f"{name} t/spoof")
    adcf = adcf_curve(scores, keys)
    assert_rel(adcf.min_adcf, case["a_dcf"]["min_a_dcf"], f"{name} a-DCF")
    assert_rel(adcf.threshold, case["a_dcf"]["min_a_dcf_thresh"], f"{name} a-DCF threshold")
    assert_rel(adcf.curve, case["a_dcf"]["curve"], f"{name} a-DCF curve")
    return {
        "target", "nontarget", "spoof", "get_all_EERs",
        "compute_eer_target_vs_nontarget", "compute_eer_target_vs_spoof", "a_dcf",
    }


def check_tiny_tdcf_case(name: str, case: dict) -> set:
    inputs = ("tar_asv", "non_asv", "spoof_asv", "bona_cm", "spoof_cm")
    result = tdcf_curve(*(case[key] for key in inputs))
    for key, attribute in TDCF_SMALL_FIELDS.items():
        assert_rel(getattr(result, attribute), case[key], f"{name} {key}")
    return set(inputs) | set(TDCF_SMALL_FIELDS)


def test_tiny_cases_golden(golden):
    assert golden["tiny_cases"], "no tiny cases in the golden file"
    for name, case in golden["tiny_cases"].items():
        check = check_tiny_tdcf_case if "tDCF_curve" in case else check_tiny_eer_case
        checked = check(name, case)
        assert set(case) <= checked, f"{name}: golden values not checked: {set(case) - checked}"


# ---------------------------------------------------------------- oracles


def reference_recipe_eer(target, nontarget) -> float:
    """The SASV 2022 recipe written out with sklearn and scipy."""
    labels = [1] * len(target) + [0] * len(nontarget)
    fpr, tpr, _ = roc_curve(labels, list(target) + list(nontarget), pos_label=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0)


def sweep_eer(target, nontarget) -> tuple[float, float]:
    """Per-sample sweep by explicit counting (Python's sorted() is stable)."""
    trials = sorted([(s, 1) for s in target] + [(s, 0) for s in nontarget], key=lambda trial: trial[0])
    best = None
    rejected_tar = rejected_non = 0
    for k in range(len(trials) + 1):
        if k:
            rejected_tar += trials[k - 1][1]
            rejected_non += 1 - trials[k - 1][1]
        frr = rejected_tar / len(target)
        far = (len(nontarget) - rejected_non) / len(nontarget)
        threshold = trials[0][0] - 0.001 if k == 0 else trials[k - 1][0]
        if best is None or abs(frr - far) < best[0]:
            best = (abs(frr - far), (frr + far) / 2, threshold)
    return best[1], best[2]


def sweep_adcf(scores, keys, cost: ADCFCostModel) -> tuple[float, set[float]]:
    """Min a-DCF by explicit counting, and every threshold whose cost ties with the minimum
    (equal costs at different points may differ in the last bit, so either may be the argmin)."""
    order = {"target": 0, "nontarget": 1, "spoof": 2}
    trials = sorted(zip(scores, keys), key=lambda trial: order[trial[1]])  # class-grouped, stable
    trials = sorted(trials, key=lambda trial: trial[0])
    counts = {key: keys.count(key) for key in order}
    norm = min(cost.Cfa_asv * cost.Pnontrg + cost.Cfa_cm * cost.Pspf, cost.Cmiss * cost.Ptrg)
    misses, accepted_non, accepted_spf = 0, counts["nontarget"], counts["spoof"]
    points = []
    for k in range(len(trials) + 1):
        if k:
            key = trials[k - 1][1]
            misses += key == "target"
            accepted_non -= key == "nontarget"
            accepted_spf -= key == "spoof"
        value = (
            cost.Cmiss * cost.Ptrg * misses / counts["target"]
            + cost.Cfa_asv * cost.Pnontrg * accepted_non / counts["nontarget"]
            + cost.Cfa_cm * cost.Pspf * accepted_spf / counts["spoof"]
        ) / norm
        points.append((value, trials[0][0] - 1e-8 if k == 0 else trials[k - 1][0]))
    best = min(value for value, _ in points)
    return best, {threshold for value, threshold in points if value <= best + 1e-12}


tie_heavy_scores = st.lists(st.integers(-4, 4).map(lambda v: v / 2), min_size=1, max_size=25)


@settings(max_examples=60, deadline=None)
@given(tie_heavy_scores, tie_heavy_scores, tie_heavy_scores)
def test_sasv_eers_match_sklearn_recipe(target, nontarget, spoof):
    scores = target + nontarget + spoof
    keys = ["target"] * len(target) + ["nontarget"] * len(nontarget) + ["spoof"] * len(spoof)
    permutation = np.random.default_rng(len(scores)).permutation(len(scores))
    result = sasv_eers(np.array(scores)[permutation], np.array(keys)[permutation])
    assert abs(result["sasv_eer"] - reference_recipe_eer(target, nontarget + spoof)) <= EER_ABS
    assert abs(result["sv_eer"] - reference_recipe_eer(target, nontarget)) <= EER_ABS
    assert abs(result["spf_eer"] - reference_recipe_eer(target, spoof)) <= EER_ABS
    assert abs(roc_eer(target, nontarget) - reference_recipe_eer(target, nontarget)) <= EER_ABS


@settings(max_examples=60, deadline=None)
@given(tie_heavy_scores, tie_heavy_scores)
def test_compute_eer_matches_counting_sweep(target, nontarget):
    assert_rel(compute_eer(target, nontarget), sweep_eer(target, nontarget), "compute_eer")


@settings(max_examples=60, deadline=None)
@given(tie_heavy_scores, tie_heavy_scores, tie_heavy_scores, st.sampled_from([ADCF_DEFAULT, ADCF_ASVSPOOF5]))
@example(target=[0.0, 0.5, 1.0], nontarget=[0.0, 0.0, 0.0, 0.5, 1.0], spoof=[0.0, 0.0, 0.0, 0.5, 1.0],
         cost=ADCF_DEFAULT)  # two sweep points tie at the minimum
def test_adcf_matches_counting_sweep(target, nontarget, spoof, cost):
    scores = target + nontarget + spoof
    keys = ["target"] * len(target) + ["nontarget"] * len(nontarget) + ["spoof"] * len(spoof)
    permutation = np.random.default_rng(len(scores)).permutation(len(scores))
    scores = [scores[i] for i in permutation]
    keys = [keys[i] for i in permutation]
    value, threshold = min_adcf(scores, keys, cost)
    want_value, tied_thresholds = sweep_adcf(scores, keys, cost)
    assert math.isclose(value, want_value, rel_tol=1e-9, abs_tol=1e-12)
    assert threshold in tied_thresholds


@pytest.mark.parametrize("n_classes", [2, 3])
def test_tie_regrouping_sort_equals_stable_sort(n_classes):
    rng = np.random.default_rng(n_classes)
    scores = np.round(rng.normal(size=20000), 1)  # ~80 distinct values, heavy ties
    codes = rng.integers(0, n_classes, size=scores.size).astype(np.int8)
    order = np.lexsort((codes, scores))  # by score, then class
    sorted_scores, sorted_codes = sort_by_score_then_class(scores, codes, n_classes)
    np.testing.assert_array_equal(sorted_scores, scores[order])
    np.testing.assert_array_equal(sorted_codes, codes[order])


@pytest.mark.parametrize("cost", [ADCF_DEFAULT, ADCF_ASVSPOOF5])
def test_adcf_normalisation_endpoints(cost):
    # accept-all costs the false-alarm terms, reject-all Cmiss*Ptrg; one of them is exactly 1.
    curve = adcf_curve([3.0, 2.0, 0.0, -1.0], ["target", "target", "nontarget", "spoof"], cost).curve
    accept_all = cost.Cfa_asv * cost.Pnontrg + cost.Cfa_cm * cost.Pspf
    reject_all = cost.Cmiss * cost.Ptrg
    norm = min(accept_all, reject_all)
    assert curve[0] == pytest.approx(accept_all / norm, rel=1e-12)
    assert curve[-1] == pytest.approx(reject_all / norm, rel=1e-12)
    assert min(curve[0], curve[-1]) == pytest.approx(1.0, rel=1e-12)
    assert curve[2] == 0.0  # threshold between the targets and the rest


def test_asvspoof5_cost_model_changes_the_golden_adcf(inputs):
    default = min_adcf(inputs["sasv_scores"], inputs["sasv_keys"], ADCF_DEFAULT)[0]
    asvspoof5 = min_adcf(inputs["sasv_scores"], inputs["sasv_keys"], ADCF_ASVSPOOF5)[0]
    scores, keys = list(inputs["sasv_scores"].astype(np.float64)), list(inputs["sasv_keys"])
    oracle = sweep_adcf(scores, keys, ADCF_ASVSPOOF5)[0]
    assert asvspoof5 != default
    assert math.isclose(asvspoof5, oracle, rel_tol=1e-9)


# ---------------------------------------------------------------- input types


def test_input_types_give_identical_results(inputs):
    scores32 = inputs["sasv_scores"]
    keys = inputs["sasv_keys"]
    expected = sasv_eers(scores32.astype(np.float64), keys)
    expected_adcf = min_adcf(scores32.astype(np.float64), keys)
    tensor = torch.from_numpy(scores32)
    for scores in (scores32, scores32.tolist(), tensor, tensor.clone().requires_grad_()):
        for key_input in (keys, keys.tolist(), tuple(keys.tolist()), keys.astype(object)):
            assert sasv_eers(scores, key_input) == expected
            assert min_adcf(scores, key_input) == expected_adcf
    target, nontarget = by_key(inputs, "target"), by_key(inputs, "nontarget")
    assert compute_eer(torch.from_numpy(target), nontarget.tolist()) == compute_eer(target, nontarget)


# ---------------------------------------------------------------- errors


def test_missing_class_is_an_error():
    with pytest.raises(MetricError, match="no spoof trials: spf_eer"):
        sasv_eers([1.0, 0.0], ["target", "nontarget"])
    with pytest.raises(MetricError, match="no nontarget trials"):
        sasv_eers([1.0, 0.0], ["target", "spoof"])
    with pytest.raises(MetricError, match="no target trials"):
        min_adcf([1.0, 0.0], ["nontarget", "spoof"])
    with pytest.raises(MetricError, match="no non-target trials"):
        compute_eer([1.0, 2.0], [])
    with pytest.raises(MetricError, match="no target trials"):
        roc_eer([], [1.0])
    with pytest.raises(MetricError, match="no ASV spoof trials"):
        min_tdcf([1.0, 2.0], [0.0], [], [1.0, 2.0], [0.0, -1.0])


def test_unknown_key_names_key_and_position():
    with pytest.raises(MetricError, match=r"unknown key 'bonafide' at position 2"):
        sasv_eers([1.0, 0.0, 0.5, 0.2], ["target", "nontarget", "bonafide", "spoof"])
    with pytest.raises(MetricError, match=r"unknown key 'Target' at position 0"):
        min_adcf([1.0, 0.0, 0.5], ["Target", "nontarget", "spoof"])
    with pytest.raises(MetricError, match="keys must be strings"):
        sasv_eers([1.0, 0.0, 0.5], [0, 1, 2])


def test_mismatched_lengths():
    with pytest.raises(MetricError, match="3 scores but 2 keys"):
        sasv_eers([1.0, 0.0, 0.5], ["target", "nontarget"])
    with pytest.raises(MetricError, match="3 scores but 4 keys"):
        min_adcf([1.0, 0.0, 0.5], ["target", "nontarget", "spoof", "spoof"])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_scores(bad):
    with pytest.raises(MetricError, match=r"scores: 1 NaN/inf score\(s\), first at position 1"):
        sasv_eers([1.0, bad, 0.5], ["target", "nontarget", "spoof"])
    with pytest.raises(MetricError, match="nontarget_scores: 1 NaN/inf"):
        compute_eer([1.0], [0.0, bad])
    with pytest.raises(MetricError, match="cm_spoof: 1 NaN/inf"):
        min_tdcf([1.0, 2.0], [0.0], [0.5], [1.0, 2.0], [0.0, bad])


def test_other_invalid_inputs():
    with pytest.raises(MetricError, match="1-D"):
        compute_eer(np.ones((2, 2)), [0.0])
    with pytest.raises(MetricError, match="must be numbers"):
        roc_eer(["a"], [0.0])
    with pytest.raises(MetricError, match="not decisions"):
        min_tdcf([1.0, 2.0], [0.0], [0.5], [1.0, 1.0], [0.0, 0.0])
    with pytest.raises(MetricError, match="sum to 1"):
        ADCFCostModel(Ptrg=0.5)
    with pytest.raises(MetricError, match="sum to 1"):
        TDCFCostModel(
            Pspoof=0.1, Ptar=0.9405, Pnon=0.0095, Cmiss_asv=1, Cfa_asv=10, Cmiss_cm=1, Cfa_cm=10
        )
    assert issubclass(MetricError, ValueError)


def test_tdcf_undefined_when_asv_rejects_every_spoof():
    # spoofs all score below the ASV EER threshold -> C2 = 0 and min(C1, C2) = 0
    with pytest.raises(MetricError, match=r"t-DCF is undefined: .*C2=0"):
        min_tdcf([2.0, 3.0], [0.0, 1.0], [-5.0], [1.0, 2.0, 3.0], [0.0, -1.0])
