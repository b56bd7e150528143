"""Each Triton kernel, run on CPU tensors by Triton's interpreter, against its PyTorch reference
(and the references against plain float64 maths), across dtypes, odd sizes and strides."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel is built in this process

import pytest  # noqa: E402
import torch  # noqa: E402

from ltc_stream import kernels as K  # noqa: E402
from ltc_stream.errors import ConfigError, NonFiniteError  # noqa: E402
from ltc_stream.kernels.dispatch import triton_available  # noqa: E402
from ltc_stream.kernels.extrapolate import extrapolate_ref  # noqa: E402
from ltc_stream.kernels.guided_euler import guided_euler_step_ref  # noqa: E402
from ltc_stream.kernels.pair_stats import pair_stats_ref  # noqa: E402

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton is not installed")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
SIZES = [1, 255, 1000, 4097]


@pytest.fixture
def forced_triton(monkeypatch):
    monkeypatch.setenv("LTC_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def make(n, dtype, strided, seed):
    g = torch.Generator().manual_seed(seed)
    if strided:  # every other column of a 2-column matrix: non-contiguous
        return torch.randn(n, 2, generator=g).to(dtype)[:, 0]
    return torch.randn(n, generator=g).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("strided", [False, True])
def test_extrapolate_matches_reference(forced_triton, dtype, n, strided):
    x1, x2 = make(n, dtype, strided, 1), make(n, dtype, strided, 2)
    for c in (0.93, torch.tensor(0.93)):
        got = K.extrapolate(x1, x2, c)
        want = extrapolate_ref(x1, x2, c)
        assert got.dtype == dtype and got.shape == x1.shape
        torch.testing.assert_close(got.float(), want.float(), atol=TOL[dtype] * 4, rtol=TOL[dtype])
    # the reference itself against float64 maths
    exact = x1.double() + 0.93 * (x1.double() - x2.double())
    torch.testing.assert_close(extrapolate_ref(x1, x2, 0.93).double(), exact, atol=TOL[dtype] * 8, rtol=TOL[dtype] * 2)


def test_extrapolate_into_out_and_multi_dim(forced_triton):
    x1, x2 = torch.randn(2, 3, 5, 7), torch.randn(2, 3, 5, 7)
    out = torch.empty_like(x1)
    res = K.extrapolate(x1, x2, 1.7, out=out)
    assert res is out
    torch.testing.assert_close(out, x1 + 1.7 * (x1 - x2))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_pair_stats_matches_reference_and_is_deterministic(forced_triton, dtype, n):
    a, b = make(n, dtype, True, 3), make(n, dtype, False, 4)
    got = K.pair_stats(a, b)
    assert got.dtype == torch.float32 and got.shape == (3,)
    ad, bd = a.double(), b.double()
    exact = torch.stack([(ad * bd).sum(), (ad * ad).sum(), (bd * bd).sum()]).float()
    torch.testing.assert_close(got, exact, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(pair_stats_ref(a, b), exact, atol=1e-3, rtol=1e-4)
    assert torch.equal(K.pair_stats(a, b), got)  # same bits on a second run


def test_angle_and_weight_from_stats():
    b = torch.randn(500, dtype=torch.float64)
    a = 0.8 * b + 0.05 * torch.randn(500, dtype=torch.float64)
    stats = pair_stats_ref(a, b)
    cos = float((a @ b) / (a.norm() * b.norm()))
    assert float(K.angle_from_stats(stats)) == pytest.approx(torch.tensor(cos).arccos().item(), abs=1e-5)
    assert float(K.lsq_weight_from_stats(stats, 2.0)) == pytest.approx(float((a @ b) / (2.0 * (b @ b))), rel=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("guided", [True, False])
def test_guided_euler_step_matches_reference(forced_triton, dtype, guided):
    x, vu, vc = make(1000, dtype, True, 5), make(1000, dtype, False, 6), make(1000, dtype, False, 7)
    v_u = vu if guided else None
    got_x, got_v = K.guided_euler_step(x, v_u, vc, 5.0, -0.25)
    want_x, want_v = guided_euler_step_ref(x, v_u, vc, 5.0, -0.25)
    torch.testing.assert_close(got_x.float(), want_x.float(), atol=TOL[dtype] * 40, rtol=TOL[dtype])
    torch.testing.assert_close(got_v.float(), want_v.float(), atol=TOL[dtype] * 40, rtol=TOL[dtype])
    v = (vu.double() + 5.0 * (vc.double() - vu.double())) if guided else vc.double()
    torch.testing.assert_close(want_x.double(), x.double() - 0.25 * v, atol=TOL[dtype] * 60, rtol=TOL[dtype] * 2)


@pytest.mark.parametrize("use_triton", [True, False])
def test_nonfinite_flag_is_set_and_read_once(monkeypatch, use_triton):
    monkeypatch.setenv("LTC_KERNELS", "triton" if use_triton else "torch")
    x1, x2 = torch.randn(600), torch.randn(600)
    flag = K.new_nonfinite_flag("cpu")
    K.extrapolate(x1, x2, 0.5, flag=flag)
    K.raise_if_nonfinite(flag)  # clean: nothing raised
    x1[517] = float("nan")
    K.extrapolate(x1, x2, 0.5, flag=flag)
    with pytest.raises(NonFiniteError, match="latent"):
        K.raise_if_nonfinite(flag, "latent")
    assert int(flag.item()) == 0  # cleared after reporting
    K.guided_euler_step(torch.randn(10), None, torch.full((10,), float("inf")), 1.0, 0.1, flag=flag)
    with pytest.raises(NonFiniteError):
        K.raise_if_nonfinite(flag)


def test_forced_triton_never_falls_back_silently(forced_triton, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("the PyTorch reference ran although Triton was forced")

    monkeypatch.setattr(K, "extrapolate_ref", boom)
    monkeypatch.setattr(K, "pair_stats_ref", boom)
    K.extrapolate(torch.randn(10), torch.randn(10), 0.5)
    K.pair_stats(torch.randn(10), torch.randn(10))
    # Triton forced on CPU without the interpreter: a clear error, not the reference
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ConfigError, match="TRITON_INTERPRET"):
        K.extrapolate(torch.randn(10), torch.randn(10), 0.5)


def test_default_dispatch_on_cpu_is_the_reference(monkeypatch):
    monkeypatch.delenv("LTC_KERNELS", raising=False)
    called = []
    monkeypatch.setattr(K, "extrapolate_ref", lambda *a, **k: called.append(1) or extrapolate_ref(*a, **k))
    K.extrapolate(torch.randn(4), torch.randn(4), 0.5)
    assert called == [1]
    monkeypatch.setenv("LTC_KERNELS", "bogus")
    with pytest.raises(ConfigError, match="LTC_KERNELS"):
        K.extrapolate(torch.randn(4), torch.randn(4), 0.5)
