"""Golden values that pin minr's MINR and MAE to the official code's behaviour (yinboc/trans-inr, kakaobrain/ginr-ipc,
facebookresearch/mae), without vendoring it: layer norms, initialisation statistics, the frequency table, dropout,
MAE's sin-cos order and the import of official MAE weights."""

import math

import pytest
import torch
from torch import nn

from minr import inr
from minr.errors import MinrError
from minr.models import create_model
from minr.models.mae import mae_sincos


@pytest.fixture(scope="module")
def paper_minr():
    torch.manual_seed(0)
    return {n: create_model(n) for n in ("transinr_paper", "ginr_paper")}


def test_frequency_table_is_the_official_formula():
    """exp(linspace(0, ln sigma, 64)) in float32: values computed once with the official expression."""
    golden = {
        64: (1.0682417154312134, 7.740253448486328, 59.91154861450195),
        128: (1.0800597667694092, 10.886320114135742, 118.511962890625),
        1024: (1.1163041591644287, 30.28717613220215, 917.3126220703125),
    }
    for sigma, (f1, f31, f62) in golden.items():
        f = inr.fourier_frequencies(64, sigma)
        assert (f[0].item(), f[1].item(), f[31].item(), f[62].item(), f[63].item()) == (1.0, f1, f31, f62, float(sigma))
    # features multiply in the official order, (c * w) * pi, and the layout is [cos | sin] over (y freqs, x freqs)
    c = torch.tensor([[0.3, -0.7]])
    w = inr.fourier_frequencies(4, 1024)
    feats = inr.fourier_features(c, w)
    angles = torch.cat([(c[0, 0] * w) * math.pi, (c[0, 1] * w) * math.pi])
    assert torch.equal(feats[0], torch.cat([torch.cos(angles), torch.sin(angles)]))


@pytest.mark.parametrize("name", ["transinr_paper", "ginr_paper", "transinr_tiny", "ginr_tiny"])
def test_every_minr_layer_norm_has_the_official_eps(name, paper_minr):
    model = paper_minr.get(name) or create_model(name)
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 2 * len(model.blocks) + len(model.heads) and all(m.eps == 1e-5 for m in norms)


def test_mae_layer_norms_keep_mae_eps():
    model = create_model("mae_tiny")
    assert all(m.eps == 1e-6 for m in model.modules() if isinstance(m, nn.LayerNorm))


@pytest.mark.parametrize("name", ["transinr_paper", "ginr_paper"])
def test_learned_tokens_and_positions_start_at_std_one(name, paper_minr):
    """torch.randn in trans-inr, normal_(0, 1) in ginr-ipc (minr used to start them at 0.02)."""
    model = paper_minr[name]
    for t in (model.weight_tokens, model.pos_embed):
        assert abs(t.mean().item()) < 0.01 and t.std().item() == pytest.approx(1.0, abs=0.01)
        assert t.abs().max() > 3.5  # not truncated


def test_transinr_inr_init_is_nn_linear_default(paper_minr):
    model = paper_minr["transinr_paper"]
    for (i, _), w, b in zip(model.layer_shapes, model.base_weights, model.biases, strict=True):
        bound = 1 / math.sqrt(i)  # U(-1/sqrt(in), 1/sqrt(in)) for weights and biases
        assert w.abs().max() <= bound and w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
        assert b.abs().max() <= bound and torch.count_nonzero(b) == len(b)
        if len(b) > 50:  # U(-bound, bound): the largest of many values comes close to the bound
            assert b.abs().max() > 0.9 * bound


def test_ginr_inr_init_follows_ginr_ipc(paper_minr):
    """kaiming_uniform(a=sqrt(5)) on the (in, out) matrix (bound 1/sqrt(out)), zero biases, V ~ N(0, 1/(rank*in))."""
    model = paper_minr["ginr_paper"]
    for (_, o), w, b in zip(model.layer_shapes, model.base_weights, model.biases, strict=True):
        bound = 1 / math.sqrt(o)
        assert w.abs().max() <= bound and w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
        assert torch.count_nonzero(b) == 0
    last = model.base_weights[-1]
    assert last.std().item() > 8 * model.base_weights[0].std().item()  # the 3-wide output layer: ~10x wider
    rank, fan_in = model.ginr_v.shape[0], model.layer_shapes[1][0]
    assert model.ginr_v.std().item() == pytest.approx(1 / math.sqrt(rank * fan_in), rel=0.02)


def test_ginr_has_residual_dropout_only(paper_minr):
    for block in paper_minr["ginr_paper"].blocks:
        assert block.mlp.drop1.p == 0.0 and block.mlp.drop2.p == 0.1 and block.attn.proj_drop.p == 0.1
        assert block.attn.attn_drop.p == 0.0
    assert all(m.p == 0.0 for m in paper_minr["transinr_paper"].modules() if isinstance(m, nn.Dropout))


@pytest.mark.parametrize("layer", [1, 2, 3, 4])
def test_ginr_modulated_layer_is_any_hidden_layer(layer):
    """model_args.modulated_layer picks the instance-specific layer: shapes, parameter count and a training step."""
    model = create_model("ginr_tiny", modulated_layer=layer)
    fan_in, fan_out = model.layer_shapes[layer - 1]
    assert model.heads[0][1].out_features == fan_in and model.ginr_v.shape == (min(64, fan_out), fan_out)
    assert not model.base_weights[layer - 1].requires_grad
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in create_model("ginr_tiny").parameters()
    ) + 64 * (fan_in - 64)
    x = torch.rand(2, 1, 28, 28)
    mask = torch.zeros(2, 7, 7, dtype=torch.bool)
    tokens = model.encode(x)
    weights = model.predict_weights(tokens)
    assert [w.dim() for w in weights] == [3 if i == layer - 1 else 2 for i in range(5)]
    out = model(x, mask, 4)
    out.loss.backward()
    assert model.ginr_v.grad is not None and model.heads[0][1].weight.grad is not None
    with pytest.raises(MinrError, match="modulated_layer must name a hidden layer, 1..4"):
        create_model("ginr_tiny", modulated_layer=5)


def test_mae_sincos_is_mae_order_and_precision():
    """[sin x | cos x | sin y | cos y] with omega_k = 1 / 10000^(k / (D/4)); hand-computed for D = 8."""
    pe = mae_sincos(3, 4, 8)  # a 3 x 4 grid
    y, x = 1, 2
    row = pe[y * 4 + x]
    omega = torch.tensor([1.0, 1 / 100.0], dtype=torch.float64)
    expect = torch.cat([torch.sin(x * omega), torch.cos(x * omega), torch.sin(y * omega), torch.cos(y * omega)])
    assert torch.equal(row, expect.float())
    model = create_model("mae_tiny")
    assert torch.equal(model.pos_embed[0, 1:], mae_sincos(7, 7, 128)) and not model.pos_embed[0, 0].any()


def test_official_mae_weights_import_and_give_the_same_features(tmp_path):
    """A file in mae_pretrain_vit_base.pth's layout ({'model': encoder tensors}, ImageNet-normalised inputs) becomes
    a minr checkpoint whose encoder computes what the file's encoder computes, at the native and another size."""
    from minr.build import model_from_checkpoint
    from minr.imports import import_mae

    torch.manual_seed(0)
    src = create_model("mae_base_paper", image_size=32, patch_size=16, depth=2, input_norm="imagenet").eval()
    encoder_only = {k: v for k, v in src.state_dict().items() if src.is_encoder_parameter(k)}
    torch.save({"model": encoder_only}, tmp_path / "mae_pretrain.pth")
    out = import_mae(tmp_path / "mae_pretrain.pth", tmp_path / "imported.safetensors")
    model, cfg, meta = model_from_checkpoint(str(out))
    assert (cfg.model, cfg.mask.patch, meta["decoder"].startswith("initialised")) == ("mae_base_paper", 16, True)
    for size in (32, 48):
        x = torch.rand(2, 3, size, size)
        with torch.no_grad():
            assert torch.allclose(model.forward_features(x), src.forward_features(x), atol=1e-5)
    plain = create_model("mae_base_paper", image_size=32, patch_size=16, depth=2).eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():  # without MAE's ImageNet input normalisation the same weights compute something else
        assert not torch.allclose(plain.forward_features(x), src.forward_features(x), atol=1e-3)


def test_import_refuses_code_and_foreign_files(tmp_path):
    from minr.imports import import_mae

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"model": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(MinrError, match="refused without running it"):
        import_mae(tmp_path / "evil.pth", tmp_path / "x.safetensors")
    torch.save({"model": {"w": torch.zeros(2)}}, tmp_path / "other.pth")
    with pytest.raises(MinrError, match="holds no MAE weights"):
        import_mae(tmp_path / "other.pth", tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
