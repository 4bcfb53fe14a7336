import pytest
import torch

from membrane_py.models.unet import UNet, UNetConfig


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_output_shape_and_classes(norm):
    net = UNet(UNetConfig(n_classes=3, depth=2, base_filters=4, norm=norm, dropout=0.2)).eval()
    out = net(torch.zeros(2, 1, 32, 48))
    assert out.shape == (2, 3, 32, 48)


def test_any_multiple_of_two_to_depth_works_and_others_raise():
    net = UNet(depth=3, base_filters=4).eval()
    assert net(torch.zeros(1, 1, 8, 16)).shape == (1, 2, 8, 16)
    with pytest.raises(ValueError, match="multiple of 8"):
        net(torch.zeros(1, 1, 12, 16))


def test_default_matches_membrain_and_light_is_cheaper():
    cfg = UNetConfig()
    assert (cfg.depth, cfg.base_filters, cfg.multiple) == (5, 32, 32)
    n_default = sum(p.numel() for p in UNet(cfg).parameters())
    n_light = sum(p.numel() for p in UNet(UNetConfig.light()).parameters())
    assert n_light * 10 < n_default


def test_config_round_trip_and_validation():
    cfg = UNetConfig(n_classes=4, depth=3, norm="group")
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="norm"):
        UNetConfig(norm="layer")
    with pytest.raises(ValueError, match="n_classes"):
        UNetConfig(n_classes=1)
