import pytest
import torch

from pyro_decomp.nets import (
    ConvDecoder,
    ConvDecoder64,
    ConvEncoder,
    ConvEncoder64,
    DCGANDecoder32,
    DCGANEncoder32,
    MLPDecoder,
    MLPEncoder,
    conv_halvings,
)

CASES = [
    (MLPEncoder(3, 5, hidden=(7, 11)), MLPDecoder(5, 3, hidden=(11,)), (3,)),
    (MLPEncoder((2, 4), 5), MLPDecoder(5, (2, 4)), (2, 4)),
    (ConvEncoder64(6), ConvDecoder64(6), (1, 64, 64)),
    (DCGANEncoder32(6, width=8), DCGANDecoder32(6, width=8), (1, 32, 32)),
]


@pytest.mark.parametrize("enc,dec,obs", CASES)
def test_shapes_and_positive_scale(enc, dec, obs):
    x = torch.rand(4, *obs)
    loc, scale = enc(x)
    d = enc.latent_dim
    assert loc.shape == (4, d) and scale.shape == (4, d)
    assert (scale > 0).all()
    assert dec(loc).shape == (4, *obs)
    # leading particle dimensions pass through the decoder
    assert dec(torch.randn(3, 4, d)).shape == (3, 4, *obs)


def test_conv64_architecture_is_the_papers():
    enc = ConvEncoder64(10)
    convs = [m for m in enc.conv if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) for c in convs)
    assert enc.fc[0].out_features == 128


def test_dcgan_decoder_outputs_means_in_unit_interval():
    dec = DCGANDecoder32(4, width=8)
    out = dec(torch.randn(16, 4) * 10)
    assert ((out > 0) & (out < 1)).all()


@pytest.mark.parametrize(
    "net,bad,msg",
    [
        (ConvEncoder64(4), torch.rand(2, 1, 32, 32), r"\(batch, 1, 64, 64\).*\(2, 1, 32, 32\)"),
        (DCGANEncoder32(4, width=8), torch.rand(2, 32, 32), r"\(batch, 1, 32, 32\)"),
        (MLPEncoder(3, 2), torch.rand(2, 4), r"\(batch, 3\).*\(2, 4\)"),
        (MLPDecoder(2, 3), torch.rand(5, 3), r"latents of shape \(\.\.\., 2\).*\(5, 3\)"),
    ],
)
def test_bad_shapes_raise_clear_errors(net, bad, msg):
    with pytest.raises(ValueError, match=msg):
        net(bad)


def test_bad_sizes_rejected():
    with pytest.raises(ValueError, match="latent_dim must be a positive integer, got 0"):
        MLPEncoder(3, 0)
    with pytest.raises(ValueError, match="output must be"):
        DCGANDecoder32(3, output="tanh")


# ---------------------------------------------------------- a decoder that predicts its likelihood's scale
@pytest.mark.parametrize("out_shape,hidden", [(3, (11,)), ((2, 4), (7, 5)), (2, ())])
def test_mlp_decoder_scale_head_shapes_and_positivity(out_shape, hidden):
    dec = MLPDecoder(5, out_shape, hidden=hidden, scale="decoder")
    obs = (out_shape,) if isinstance(out_shape, int) else out_shape
    assert dec.predicts_scale
    for lead in ((4,), (3, 4), ()):
        loc, scale = dec(torch.randn(*lead, 5) * 10)
        assert loc.shape == scale.shape == (*lead, *obs)
        assert (scale > 0).all() and torch.isfinite(scale).all()


def test_mlp_decoder_scale_head_is_the_papers_second_head():
    # loc = fc31(h), scale = softplus(fc32(h)) + 1e-4 on the same hidden layer h; the location head and the
    # body are those of scale="global", so the same seed gives the same location
    torch.manual_seed(0)
    glob = MLPDecoder(2, 2)
    torch.manual_seed(0)
    dec = MLPDecoder(2, 2, scale="decoder")
    assert not glob.predicts_scale
    z = torch.randn(6, 2)
    loc, scale = dec(z)
    assert torch.equal(loc, glob(z))
    h = dec.net[:-1](z)
    assert h.shape == (6, 100)
    expected = torch.nn.functional.softplus(h @ dec.raw_scale.weight.T + dec.raw_scale.bias) + 1e-4
    assert torch.allclose(scale, expected)
    # a zero scale head starts at the paper's softplus(0) = log 2
    with torch.no_grad():
        dec.raw_scale.weight.zero_()
        dec.raw_scale.bias.zero_()
    assert torch.allclose(dec(z)[1], torch.full((6, 2), torch.log(torch.tensor(2.0)).item() + 1e-4))
    # global keeps its state dict keys; decoder adds the scale head
    assert set(dec.state_dict()) == set(glob.state_dict()) | {"raw_scale.weight", "raw_scale.bias"}


def test_mlp_decoder_scale_never_underflows():
    dec = MLPDecoder(2, 2, scale="decoder")
    with torch.no_grad():
        dec.raw_scale.bias.fill_(-1e4)
    assert (dec(torch.randn(3, 2))[1] >= 1e-4).all()


def test_mlp_decoder_bad_scale_option_named():
    with pytest.raises(ValueError, match=r"scale must be one of \('global', 'decoder'\), got 'pixel'"):
        MLPDecoder(2, 3, scale="pixel")


@pytest.mark.parametrize("obs", [(1, 28, 28), (3, 28, 28), (3, 64, 64), (2, 32, 48), (1, 16, 16)])
def test_conv_pair_takes_any_channels_and_sizes_it_can(obs):
    enc, dec = ConvEncoder(obs, 5), ConvDecoder(5, obs)
    x = torch.rand(3, *obs)
    loc, scale = enc(x)
    assert loc.shape == scale.shape == (3, 5) and (scale > 0).all()
    assert dec(loc).shape == (3, *obs) and dec(torch.randn(2, 3, 5)).shape == (2, 3, *obs)


def test_conv_halvings_and_refusals():
    assert [conv_halvings(s, s) for s in (16, 28, 32, 64, 128)] == [2, 2, 3, 4, 4]
    for h, w in ((27, 27), (28, 30), (8, 8), (12, 12)):
        with pytest.raises(ValueError, match=f"got {h}x{w}; resize them") as e:
            ConvEncoder((3, h, w), 4)
        assert "\n" not in str(e.value)


def test_conv_on_64x64_is_the_conv64_architecture():
    # the same layers, parameter for parameter, as the paper's dSprites encoder and decoder
    for ours, papers in (
        (ConvEncoder((1, 64, 64), 10), ConvEncoder64(10)),
        (ConvDecoder(10, (1, 64, 64)), ConvDecoder64(10)),
    ):
        shapes = [tuple(p.shape) for p in ours.parameters()]
        assert shapes == [tuple(p.shape) for p in papers.parameters()]
