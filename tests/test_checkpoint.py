import pickle

import pytest
import torch
from safetensors.torch import save_file

from minr.checkpoint import load_checkpoint, save_checkpoint, weights_sha256
from minr.errors import MinrError


def _model_and_optim():
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return model, opt


def test_roundtrip_restores_weights_and_optimizer(tmp_path):
    model, opt = _model_and_optim()
    save_checkpoint(
        tmp_path / "c.safetensors",
        model_state=model.state_dict(),
        optim_state=opt.state_dict(),
        meta={"model": "m", "step": 7, "config": {}},
    )
    c = load_checkpoint(tmp_path / "c.safetensors")
    assert c.meta["step"] == 7 and weights_sha256(c.model_state) == weights_sha256(model.state_dict())
    fresh = torch.optim.Adam(torch.nn.Linear(4, 3).parameters())
    fresh.load_state_dict(c.optim_state)
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary file was renamed away


class Payload:
    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_pickled_checkpoint_with_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    p = Payload()
    p.marker = marker
    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps({"model": p}))
    with pytest.raises(MinrError, match="is a pickle .* minr never unpickles"):
        load_checkpoint(evil)
    assert not marker.exists()
    # the same payload in torch.save's zip format
    torch.save({"model": p}, tmp_path / "evil.pt")
    with pytest.raises(MinrError, match="is a pickle"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_truncated_and_foreign_files(tmp_path):
    model, _ = _model_and_optim()
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, model_state=model.state_dict(), meta={"model": "m", "step": 1, "config": {}})
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(MinrError, match="truncated"):
        load_checkpoint(tmp_path / "cut.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(MinrError, match="not a minr checkpoint"):
        load_checkpoint(tmp_path / "other.safetensors")
    with pytest.raises(MinrError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")
