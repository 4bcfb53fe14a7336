"""The tiled PyTorch engine: shapes, probabilities, tiling invariance, blending, preprocessing."""

import numpy as np
import pytest
import torch

from membrane_py.augment.preprocess import PreprocessConfig, preprocess
from membrane_py.infer.engine import EngineConfig, load_predictor
from membrane_py.infer.predictor import Predictor
from membrane_py.infer.surgery import InferenceUNet
from membrane_py.infer.tiling import blend_profile, plan_axis, receptive_radius
from membrane_py.models.unet import UNet, UNetConfig
from membrane_py.predict.evaluate import predict_probabilities
from membrane_py.train.checkpoint import Checkpoint, save_checkpoint
from membrane_py.volumes.synthetic import make_synthetic

CFG = UNetConfig(depth=3, base_filters=4)  # receptive radius 46 px < default margin 64


def random_net(cfg: UNetConfig = CFG, seed: int = 0) -> UNet:
    """A U-Net with random weights (He init, so the output depends on context) and non-trivial
    BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    net = UNet(cfg)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    return net.eval()


def checkpoint(clahe: bool = False, net: UNet | None = None) -> Checkpoint:
    net = net or random_net()
    return Checkpoint(state_dict=net.state_dict(), model=net.config.to_dict(),
                      class_names=["non-membrane", "membrane"],
                      preprocess=PreprocessConfig(clahe=clahe).to_dict())


@pytest.fixture(scope="module")
def ck() -> Checkpoint:
    return checkpoint()


@pytest.fixture(scope="module")
def em() -> np.ndarray:
    return make_synthetic((2, 160, 420), seed=1).em


def test_predictor_protocol_and_shapes(ck, tmp_path):
    path = save_checkpoint(tmp_path / "net.pt", ck)
    pred = load_predictor(path, device="cpu")
    assert isinstance(pred, Predictor)
    assert pred.class_names == ["non-membrane", "membrane"] and pred.n_classes == 2
    assert pred.margin == 64
    rng = np.random.default_rng(0)
    for shape in [(1, 37, 53), (2, 300, 1100), (3, 1, 5), (0, 20, 20)]:
        prob = pred.predict(rng.integers(0, 256, shape, dtype=np.uint8))
        assert prob.shape == (shape[0], 2, *shape[1:]) and prob.dtype == np.float32
        assert np.all((prob >= 0) & (prob <= 1))
        np.testing.assert_allclose(prob.sum(1), 1.0, atol=1e-5)


def test_empty_stack_with_clahe():
    prob = load_predictor(checkpoint(clahe=True)).predict(np.zeros((0, 40, 30), np.uint8))
    assert prob.shape == (0, 2, 40, 30)


def test_rejects_bad_input(ck):
    pred = load_predictor(ck)
    with pytest.raises(ValueError, match="z, y, x"):
        pred.predict(np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        pred.predict(np.zeros((1, 32, 32), np.float32))
    with pytest.raises(ValueError, match="overlap"):
        EngineConfig(tile=64, overlap=64)


def test_receptive_radius_matches_gradient_support():
    for depth in (2, 3):
        net = random_net(UNetConfig(depth=depth, base_filters=8))
        n = 256
        x = torch.randn(1, 1, n, n, requires_grad=True)
        net(x)[0, 1, n // 2, n // 2].backward()
        ys, xs = np.nonzero(x.grad[0, 0].numpy())
        assert n // 2 - ys.min() == receptive_radius(depth)
        assert n // 2 - xs.min() == receptive_radius(depth)


def test_plan_axis_covers_and_aligns():
    for length in (1, 7, 63, 64, 65, 300, 1100, 2049):
        for tile, overlap, margin, m in [(64, 0, 64, 8), (100, 16, 20, 16), (512, 64, 0, 32)]:
            p = plan_axis(length, tile, margin, overlap, m)
            assert p.stride % m == 0 and p.window % m == 0
            assert p.window >= p.core + 2 * margin and p.pad_after >= margin
            assert (p.count - 1) * p.stride + p.core >= length
            assert p.count == 1 or (p.count - 2) * p.stride + p.core < length  # no spare tile
            assert p.core <= max(tile, length) + m
    fixed = plan_axis(300, 0, 16, 0, 8, window=128)
    assert fixed.window == 128 and fixed.core == 96 and fixed.stride == 96 and fixed.count == 4


def test_tiling_invariance_with_enough_margin(ck, em):
    """With margin >= receptive radius and strides on the pooling grid, every core pixel sees
    the same input as in one whole-section pass: equal up to float reassociation."""
    whole = load_predictor(ck, tile=4096).predict(em)
    tiled_pred = load_predictor(ck, tile=96, batch_size=5)
    assert len(tiled_pred.grid(em.shape)) == 2 * 2 * 5
    tiled = tiled_pred.predict(em)
    assert np.abs(tiled - whole).max() < 1e-5
    # too little context changes the seams: the check above can fail
    seams = load_predictor(ck, tile=96, margin=8).predict(em)
    assert np.abs(seams - whole).max() > 1e-3


def test_batching_across_sections_is_exact(ck, em):
    one = load_predictor(ck, tile=256, batch_size=1).predict(em)
    many = load_predictor(ck, tile=256, batch_size=7).predict(em)
    assert np.abs(one - many).max() < 1e-6


def test_blend_profiles():
    p = plan_axis(1000, 256, 64, 48, 16)
    assert p.count > 2 and p.overlap == 48
    total = np.zeros(p.length + p.core)
    for i in range(p.count):
        total[i * p.stride: i * p.stride + p.core] += blend_profile(p, i, "cosine")
    np.testing.assert_allclose(total[: p.length], 1.0, atol=1e-6)  # partition of unity
    assert blend_profile(p, 0, "cosine")[0] == 1.0  # no neighbour on the left: no ramp
    g = blend_profile(p, 1, "gaussian")
    assert g.argmax() in (p.core // 2 - 1, p.core // 2) and g.min() > 0.1
    assert np.all(blend_profile(p, 1, "none") == 1.0)


@pytest.mark.parametrize("blend", ["none", "cosine", "gaussian"])
def test_overlapping_tiles_blend_to_the_whole_prediction(ck, em, blend):
    whole = load_predictor(ck, tile=4096).predict(em[:1])
    blended = load_predictor(ck, tile=200, overlap=40, blend=blend).predict(em[:1])
    assert np.abs(blended - whole).max() < 1e-5


def test_preprocessing_from_checkpoint_is_applied():
    net = random_net(seed=3)
    image = make_synthetic((1, 64, 96), seed=5).em
    on = load_predictor(checkpoint(clahe=True, net=net)).predict(image)
    off = load_predictor(checkpoint(clahe=False, net=net)).predict(image)
    assert np.abs(on - off).max() > 1e-3
    # independent reference: reflect-pad the CLAHE'd, normalised image by the margin, run the
    # network once (64+128 and 96+128 are multiples of 8), softmax, crop
    x = np.pad(preprocess(image[0], PreprocessConfig(clahe=True)), 64, mode="reflect")
    with torch.inference_mode():
        ref = torch.softmax(net(torch.from_numpy(x)[None, None]), 1)[0, :, 64:128, 64:160]
    assert np.abs(on[0] - ref.numpy()).max() < 1e-5


def test_predict_probabilities_wrapper_leaves_model_alone():
    net = random_net().train()
    image = np.random.default_rng(1).integers(0, 256, (37, 50), dtype=np.uint8)
    prob = predict_probabilities(net, image, PreprocessConfig())
    assert prob.shape == (2, 37, 50)
    assert net.training and any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    net.eval()
    ref = load_predictor(checkpoint(net=net)).predict(image[None])[0]
    assert np.abs(prob - ref).max() < 1e-5


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_inference_rewrite_matches_the_network(norm):
    net = random_net(UNetConfig(depth=2, base_filters=4, norm=norm, dropout=0.3))
    x = torch.randn(2, 1, 48, 64)
    with torch.inference_mode():
        ref, got = net(x), InferenceUNet(net)(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in InferenceUNet(net).modules())
    assert torch.abs(ref - got).max() < 1e-5
