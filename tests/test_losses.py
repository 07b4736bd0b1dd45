"""Speaker losses against hand-computed values of voxceleb_trainer's definitions (loss/aamsoftmax.py,
loss/angleproto.py), and the AP parameters restored from a voxceleb_trainer file's __L__ entries."""
from __future__ import annotations

import math

import pytest
import torch

from losses import LOSSES, AAMSoftmax, AngleProto, SoftmaxProto, build_loss
from models.checkpoint import apply_state, load_checkpoint

torch.set_num_threads(2)


def softmax_cross_entropy(logits: list[float], label: int) -> float:
    top = max(logits)
    return -(logits[label] - top - math.log(sum(math.exp(value - top) for value in logits)))


def unit_weights(module: AAMSoftmax) -> None:
    with torch.no_grad():
        module.weight.copy_(torch.eye(module.n_classes, module.embedding_dim))


def test_losses_are_registered_by_name():
    assert LOSSES["aamsoftmax"] is AAMSoftmax and LOSSES["angleproto"] is AngleProto
    aam = build_loss("AAMSoftmax", embedding_dim=4, n_classes=3, margin=0.3, scale=15.0)
    assert aam.weight.shape == (3, 4) and (aam.margin, aam.scale) == (0.3, 15.0)
    proto = build_loss("angleproto", init_w=2.0, init_b=-1.0)
    assert (proto.w.item(), proto.b.item()) == (2.0, -1.0) and proto.w.dim() == 0
    assert LOSSES["softmaxproto"] is SoftmaxProto
    with pytest.raises(ValueError, match="valid losses: aamsoftmax, angleproto, ocsoftmax, softmaxproto"):
        build_loss("softmax")


@pytest.mark.parametrize("theta, label", [(0.7, 0), (1.2, 1), (math.pi - 0.1, 0)])
def test_aam_softmax_hand_computed(theta, label):
    """Two classes on the unit axes; the embedding (length 3) at angle theta from class 0."""
    margin, scale = 0.2, 30.0
    loss_fn = AAMSoftmax(embedding_dim=2, n_classes=2, margin=margin, scale=scale)
    unit_weights(loss_fn)
    embedding = torch.tensor([[3 * math.cos(theta), 3 * math.sin(theta)]], dtype=torch.float64)
    loss_fn.double()
    loss, accuracy = loss_fn(embedding, torch.tensor([label]))

    cosines = [math.cos(theta), math.sin(theta)]  # cos of the angle to class 0 and to class 1
    angle = math.acos(cosines[label])
    if math.cos(angle) > math.cos(math.pi - margin):
        target = math.cos(angle + margin)
    else:  # past pi - m: linear continuation cos(theta) - m sin(pi - m)
        target = cosines[label] - margin * math.sin(math.pi - margin)
    logits = [scale * c for c in cosines]
    logits[label] = scale * target
    assert loss.item() == pytest.approx(softmax_cross_entropy(logits, label), rel=1e-12)
    assert accuracy.item() == float(max(range(2), key=lambda i: logits[i]) == label)


def test_aam_softmax_branch_past_pi_minus_margin_is_used():
    # theta = pi - 0.1 is beyond pi - m for m = 0.2: cos(theta + m) would wrap and rise again.
    loss_fn = AAMSoftmax(embedding_dim=2, n_classes=2, margin=0.2, scale=1.0).double()
    unit_weights(loss_fn)
    theta = math.pi - 0.1
    logits = loss_fn.logits(torch.tensor([[math.cos(theta), math.sin(theta)]], dtype=torch.float64),
                            torch.tensor([0]))
    assert logits[0, 0].item() == pytest.approx(math.cos(theta) - 0.2 * math.sin(math.pi - 0.2), rel=1e-12)
    assert logits[0, 0].item() != pytest.approx(math.cos(theta + 0.2), rel=1e-3)


def test_aam_softmax_easy_margin_keeps_obtuse_cosines():
    loss_fn = AAMSoftmax(embedding_dim=2, n_classes=2, margin=0.2, scale=1.0, easy_margin=True).double()
    unit_weights(loss_fn)
    for theta in (2.0, 0.5):
        logits = loss_fn.logits(torch.tensor([[math.cos(theta), math.sin(theta)]], dtype=torch.float64),
                                torch.tensor([0]))
        expected = math.cos(theta + 0.2) if math.cos(theta) > 0 else math.cos(theta)
        assert logits[0, 0].item() == pytest.approx(expected, rel=1e-12)


def test_aam_softmax_grouped_input_equals_flat_input():
    torch.manual_seed(0)
    loss_fn = AAMSoftmax(embedding_dim=8, n_classes=5)
    grouped = torch.randn(4, 3, 8)
    speakers = torch.tensor([0, 3, 1, 4])
    loss, accuracy = loss_fn(grouped, speakers)
    flat_loss, flat_accuracy = loss_fn(grouped.reshape(12, 8), speakers.repeat_interleave(3))
    assert torch.equal(loss, flat_loss) and torch.equal(accuracy, flat_accuracy)
    with pytest.raises(ValueError, match=r"expects embeddings \[N, 8\]"):
        loss_fn(torch.randn(4, 7), speakers)


def _angle_proto_by_hand(groups: list[list[list[float]]], w: float, b: float) -> float:
    def cosine(u, v):
        return sum(x * y for x, y in zip(u, v)) / math.sqrt(sum(x * x for x in u) * sum(y * y for y in v))

    queries = [group[0] for group in groups]
    prototypes = [[sum(column) / (len(group) - 1) for column in zip(*group[1:])] for group in groups]
    losses = [softmax_cross_entropy([w * cosine(query, prototype) + b for prototype in prototypes], i)
              for i, query in enumerate(queries)]
    return sum(losses) / len(losses)


def test_angle_proto_hand_computed():
    # 3 speakers x 3 utterances, 2-d: query = first utterance, prototype = mean of the other two.
    groups = [[[1.0, 0.2], [0.9, 0.1], [1.2, -0.3]],
              [[-0.4, 1.0], [-0.1, 0.8], [0.3, 1.1]],
              [[-1.0, -0.5], [-0.7, -0.9], [0.2, -1.0]]]
    loss_fn = AngleProto(init_w=10.0, init_b=-5.0).double()
    loss, accuracy = loss_fn(torch.tensor(groups, dtype=torch.float64))
    assert loss.item() == pytest.approx(_angle_proto_by_hand(groups, 10.0, -5.0), rel=1e-12)
    assert accuracy.item() == 1.0
    # Swapping two speakers' prototypes makes two queries point at the wrong prototype.
    swapped = [groups[0][:1] + groups[1][1:], groups[1][:1] + groups[0][1:], groups[2]]
    assert loss_fn(torch.tensor(swapped, dtype=torch.float64))[1].item() == pytest.approx(1 / 3)


def test_angle_proto_scale_is_clamped_positive():
    groups = torch.tensor([[[1.0, 0.0], [1.0, 0.1]], [[0.0, 1.0], [0.1, 1.0]]], dtype=torch.float64)
    loss_fn = AngleProto(init_w=-3.0, init_b=0.0).double()
    # w is clamped to 1e-6: the logits are ~0, so the loss is ~log(2) instead of rewarding confusion.
    assert loss_fn(groups)[0].item() == pytest.approx(math.log(2), abs=1e-5)
    with pytest.raises(ValueError, match="utterances >= 2"):
        loss_fn(torch.randn(3, 1, 2, dtype=torch.float64))


def test_angle_proto_parameters_load_from_voxceleb_trainer_file(fixtures):
    checkpoint = load_checkpoint(fixtures / "golden" / "resnetse34v2_vox_format.model")
    assert checkpoint.format == "voxceleb"
    loss_fn = AngleProto(init_w=1.0, init_b=0.0)
    apply_state(loss_fn, checkpoint.asv_loss_state, what="AngleProto loss", source=checkpoint.source)
    assert (loss_fn.w.item(), loss_fn.b.item()) == (10.0, -5.0)
    groups = [[[1.0, 0.2], [0.2, 0.9]], [[-0.4, 1.0], [-0.1, 0.8]]]
    loss = loss_fn.double()(torch.tensor(groups, dtype=torch.float64))[0].item()
    assert loss == pytest.approx(_angle_proto_by_hand(groups, 10.0, -5.0), rel=1e-12)


def test_softmax_proto_hand_computed_and_loads_voxceleb_trainer_keys(tmp_path):
    groups = [[[1.0, 0.2], [0.9, 0.1]], [[-0.4, 1.0], [-0.1, 0.8]], [[-1.0, -0.5], [-0.7, -0.9]]]
    labels = [2, 0, 1]  # speaker class of each row
    weight = [[0.5, -1.0], [1.5, 0.25], [-0.25, 0.75]]  # exact in float32, as the checkpoint stores them
    bias = [0.125, -0.25, 0.0625]
    # What voxceleb_trainer's softmaxproto checkpoint holds (__L__ keys), next to a network entry.
    vox = {"__S__.fc.weight": torch.zeros(2, 2), "__L__.softmax.fc.weight": torch.tensor(weight),
           "__L__.softmax.fc.bias": torch.tensor(bias), "__L__.angleproto.w": torch.tensor(7.0),
           "__L__.angleproto.b": torch.tensor(-2.0)}
    torch.save(vox, tmp_path / "softmaxproto.model")
    checkpoint = load_checkpoint(tmp_path / "softmaxproto.model")
    loss_fn = SoftmaxProto(embedding_dim=2, n_classes=3)
    apply_state(loss_fn, checkpoint.asv_loss_state, what="softmaxproto loss", source=checkpoint.source)
    loss, accuracy = loss_fn.double()(torch.tensor(groups, dtype=torch.float64), torch.tensor(labels))

    # By hand: cross-entropy of the linear classifier over all 6 utterances, plus the AP loss of the rows.
    total, correct = 0.0, 0
    for row, label in zip(groups, labels):
        for x in row:
            logits = [sum(w * v for w, v in zip(weight[c], x)) + bias[c] for c in range(3)]
            total += -(logits[label] - math.log(sum(math.exp(z) for z in logits)))
            correct += int(max(range(3), key=lambda c: logits[c]) == label)
    expected = total / 6 + _angle_proto_by_hand(groups, 7.0, -2.0)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert accuracy.item() == pytest.approx(correct / 6)
    with pytest.raises(ValueError, match="utterances >= 2"):
        loss_fn(torch.randn(3, 1, 2, dtype=torch.float64), torch.tensor(labels))
