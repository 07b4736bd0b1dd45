"""`aasist_weight` takes the ASVspoof 5 organisers' AASIST baseline weights (tests/data/asvspoof5_aasist_best.json
records the released file: its tensor names and shapes, and the organisers' own model code's output with it).

The file itself is not part of this repository. With ASVSPOOF5_AASIST_WEIGHTS pointing at a copy of it, the
last test loads it through the ASVspoof 5 joint config and compares the CM logits with the organisers' code.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from models.build import build_cm_network, build_sasv_model
from runtime.config import load_config

REPO = Path(__file__).resolve().parent.parent
RECORD = json.loads((REPO / "tests" / "data" / "asvspoof5_aasist_best.json").read_text())
JOINT_CONFIG = REPO / "configs" / "ResNetSE34V2_AASIST_OC_asvspoof5.conf"
OUT_TOL = dict(atol=1e-4, rtol=1e-4)  # as tests/test_aasist_fidelity.py


def joint_config(aasist_weight: Path):
    """The ASVspoof 5 joint config as shipped, with no ASV weights and `aasist_weight` at the given file."""
    return load_config(JOINT_CONFIG, overrides=["asv_weight=null", f"aasist_weight={aasist_weight}",
                                                f"aasist_config={REPO / 'configs' / 'aasist' / 'AASIST.conf'}"])


def test_the_cm_network_of_the_asvspoof5_configs_has_the_released_tensors():
    network = build_cm_network(load_config(JOINT_CONFIG, overrides=[
        f"aasist_config={REPO / 'configs' / 'aasist' / 'AASIST.conf'}"]))
    assert {name: list(tensor.shape) for name, tensor in network.state_dict().items()} == RECORD["state_dict"]


def test_a_file_of_the_released_layout_loads_through_aasist_weight(tmp_path):
    generator = torch.Generator().manual_seed(5)
    state = {name: torch.randint(1000, shape, generator=generator) if name.endswith("num_batches_tracked") else
             torch.randn(shape, generator=generator) for name, shape in RECORD["state_dict"].items()}
    path = tmp_path / "best.pth"
    torch.save(state, path)  # the released file is a plain state dict, as clovaai/aasist's AASIST.pth
    model, _ = build_sasv_model(joint_config(path))
    loaded = model.cm_model.state_dict()
    assert list(loaded) == list(state)
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor), name


def test_the_released_file_reproduces_the_organisers_outputs(fixtures):
    path = os.environ.get("ASVSPOOF5_AASIST_WEIGHTS")
    if not path:
        pytest.skip("set ASVSPOOF5_AASIST_WEIGHTS to the organisers' Baseline-AASIST/models/weights/AASIST/best.pth")
    assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == RECORD["source"]["sha256"], path
    torch.set_num_threads(2)
    model, _ = build_sasv_model(joint_config(Path(path)))
    model.eval()
    waves = torch.from_numpy(np.load(fixtures / "golden" / "aasist_fidelity.npz")["wave_64600"]).float()
    with torch.no_grad():
        _, logits = model.cm_model(waves)
    np.testing.assert_allclose(logits.numpy(), np.array(RECORD["logits_wave_64600"]), **OUT_TOL)
