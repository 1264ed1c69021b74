"""Speed of the path-consistency kernel and of the zarrl losses.

1. The prefix-sum kernel against loop baselines at B = 256, T = 100, d ∈ {1, 10, 100}: "naive" is
   the per-window Python loop of the reference test (rows × starts × steps, timed once), "loop t×d"
   loops over window starts and steps vectorized over the batch, "loop d" loops over the d offsets
   (shift-and-add, vectorized over batch and starts). All outputs are checked equal.
2. Forward + backward time of each loss on a realistic batch (64 slices × 100 steps, MuJoCo-sized
   networks: obs 17, action 6, two tanh layers of 256, as in the Trust-PCL recipe), next to the
   cost of the networks alone (score actions + values, then backward of their sum).

0. The kernel against its previous implementation (kept in this file only as the baseline) at
   [256, 64] d = 10 and [32, 1000] full windows, γ ∈ {0.99, 1}.

Usage: python benchmarks/losses.py [--device cuda] [--threads 1] [--repeats 20] [--kernel-only]
"""

from __future__ import annotations

import argparse
import time
from typing import Literal

import torch
from machine import cpu_model  # benchmarks/machine.py
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import Tensor, nn
from torchrl.modules import MLP, NormalParamExtractor, ProbabilisticActor, TanhNormal
from zarrl.algorithms import (
    KLReinforceLoss,
    PCLLoss,
    RTBLoss,
    TrustPCLLoss,
    path_consistency,
    segment_marks,
)

Rollout = int | Literal["full"]


def previous_path_consistency(
    reward: Tensor,
    log_prob: Tensor,
    ref_log_prob: Tensor | None,
    value: Tensor,
    next_value: Tensor,
    *,
    terminated: Tensor,
    truncated: Tensor | None = None,
    valid: Tensor | None = None,
    is_init: Tensor | None = None,
    gamma: float = 1.0,
    entropy_coef: float = 0.0,
    kl_coef: float | Tensor = 0.0,
    rollout: Rollout = 1,
    window_starts: Literal["all", "first"] = "all",
) -> Tensor:
    """BASELINE ONLY: the kernel before the blocked rewrite (segment-anchored γ weights,
    inexact for γ < 1 on long segments), kept here to time the new kernel against it."""
    shape = reward.shape
    for name, tensor in (
        ("log_prob", log_prob),
        ("value", value),
        ("next_value", next_value),
        ("terminated", terminated),
    ):
        if tensor.shape != shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {tuple(shape)}")
    if ref_log_prob is None:
        if not (isinstance(kl_coef, (int, float)) and kl_coef == 0):
            raise ValueError("ref_log_prob is required when kl_coef != 0")
    elif ref_log_prob.shape != shape:
        raise ValueError(
            f"ref_log_prob has shape {tuple(ref_log_prob.shape)}, expected {tuple(shape)}"
        )
    if rollout != "full" and not (isinstance(rollout, int) and rollout >= 1):
        raise ValueError(f"rollout must be an int >= 1 or 'full', got {rollout!r}")
    if window_starts not in ("all", "first"):
        raise ValueError(f"window_starts must be 'all' or 'first', got {window_starts!r}")
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")

    out_dtype = reward.dtype
    f64 = torch.float64
    device = reward.device
    T = shape[-1]
    start, _, end_index = segment_marks(terminated, truncated, valid, is_init)
    valid_b = (
        torch.ones(shape, dtype=torch.bool, device=device)
        if valid is None
        else valid.to(torch.bool)
    )

    tau = entropy_coef + kl_coef
    step = reward.to(f64) - tau * log_prob.to(f64)
    if ref_log_prob is not None:
        step = step + kl_coef * ref_log_prob.to(f64)
    step = torch.where(valid_b, step, torch.zeros((), dtype=f64, device=device))

    t = torch.arange(T, device=device)
    zero = torch.zeros((), dtype=f64, device=device)
    discounted = gamma != 1.0
    if discounted:
        # weight step i by γ^(i − start of its segment): windows never leave their segment, so the
        # prefix-sum differences only ever divide by γ^(segment age), not by γ^t of the whole row
        table = torch.full((T + 1,), gamma, dtype=f64, device=device).pow(
            torch.arange(T + 1, device=device, dtype=f64)
        )
        table = table.expand(*shape[:-1], T + 1)
        anchor = start | ~valid_b  # padding restarts the count too
        seg_start = torch.where(anchor, t, torch.zeros_like(t)).cummax(-1).values
        age = t - seg_start
        weight = table.gather(-1, age)
        step = step * weight
    prefix = torch.cat([torch.zeros(*shape[:-1], 1, dtype=f64, device=device), step.cumsum(-1)], -1)
    last = end_index.clamp(max=T - 1)
    if rollout != "full":
        last = torch.minimum(last, t + (rollout - 1))
    boot = torch.where(
        terminated.to(torch.bool).gather(-1, last), zero, next_value.to(f64).gather(-1, last)
    )
    if discounted:
        boot = boot * table.gather(-1, age.gather(-1, last) + 1)
    # Σ_{i=t}^{k} γ^{i−t}·x_i + γ^{k−t+1}·V(s_{k+1}), from the weighted prefix sums
    ahead = prefix.gather(-1, last + 1) - prefix[..., :T] + boot
    if discounted:
        ahead = ahead / weight
    residual = ahead - value.to(f64)

    starts = start if window_starts == "first" else valid_b
    residual = torch.where(starts, residual, zero)
    return residual.to(out_dtype)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timeit(fn, device, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def kernel_inputs(B, T, device, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype).to(device)

    terminated = (torch.rand(B, T, generator=g) < 0.02).to(device)
    truncated = torch.zeros(B, T, dtype=torch.bool, device=device)
    truncated[:, -1] = True
    return dict(
        reward=rnd(B, T),
        log_prob=-rnd(B, T).abs(),
        ref_log_prob=-rnd(B, T).abs(),
        value=rnd(B, T),
        next_value=rnd(B, T),
        terminated=terminated,
        truncated=truncated,
    )


def naive_windows(inp, gamma, tau, lam, d):
    """The per-window Python loop of the reference test: for each row, start t and step."""
    r, lp, rlp = (inp[k].tolist() for k in ("reward", "log_prob", "ref_log_prob"))
    V, NV, term = inp["value"].tolist(), inp["next_value"].tolist(), inp["terminated"].tolist()
    _, end, _ = segment_marks(inp["terminated"], inp["truncated"])
    end = end.tolist()
    B, T = len(r), len(r[0])
    out = [[0.0] * T for _ in range(B)]
    for b in range(B):
        for t in range(T):
            total, k, n = -V[b][t], t, 0
            while True:
                total += gamma**n * (r[b][k] - (tau + lam) * lp[b][k] + lam * rlp[b][k])
                n += 1
                if end[b][k] or n == d:
                    break
                k += 1
            if not term[b][k]:
                total += gamma**n * NV[b][k]
            out[b][t] = total
    return torch.tensor(out)


def loop_td(inp, gamma, tau, lam, d):
    """Loop over window starts t and steps i, vectorized over the batch."""
    r, lp, rlp = inp["reward"], inp["log_prob"], inp["ref_log_prob"]
    V, NV, term = inp["value"], inp["next_value"], inp["terminated"]
    B, T = r.shape
    _, end, _ = segment_marks(term, inp["truncated"])
    x = r - (tau + lam) * lp + lam * rlp
    out = torch.empty_like(r)
    for t in range(T):
        acc = -V[:, t]
        alive = torch.ones(B, dtype=torch.bool, device=r.device)
        for i in range(d):
            k = t + i
            if k >= T:
                break
            acc = acc + torch.where(alive, gamma**i * x[:, k], 0.0)
            stop = alive & (end[:, k] | (i == d - 1))
            boot = torch.where(term[:, k], 0.0, NV[:, k])
            acc = acc + torch.where(stop, gamma ** (i + 1) * boot, 0.0)
            alive = alive & ~stop
        out[:, t] = acc
    return out


def loop_d(inp, gamma, tau, lam, d):
    """Loop over the d offsets (shift-and-add), vectorized over batch and window starts."""
    r, lp, rlp = inp["reward"], inp["log_prob"], inp["ref_log_prob"]
    V, NV, term = inp["value"], inp["next_value"], inp["terminated"]
    B, T = r.shape
    _, end, _ = segment_marks(term, inp["truncated"])
    x = r - (tau + lam) * lp + lam * rlp
    boot = torch.where(term, 0.0, NV)
    acc = -V.clone()
    alive = torch.ones(B, T, dtype=torch.bool, device=r.device)
    for i in range(min(d, T)):
        width = T - i
        xi = torch.zeros_like(x)
        xi[:, :width] = x[:, i:]
        ei = torch.ones_like(end)
        ei[:, :width] = end[:, i:]
        bi = torch.zeros_like(x)
        bi[:, :width] = boot[:, i:]
        acc = acc + torch.where(alive, gamma**i * xi, 0.0)
        stop = alive & (ei | (i == d - 1))
        acc = acc + torch.where(stop, gamma ** (i + 1) * bi, 0.0)
        alive = alive & ~stop
    return acc


def bench_kernel(device, repeats):
    B, T, gamma, tau, lam = 256, 100, 0.99, 0.01, 0.1
    inp = kernel_inputs(B, T, device)
    rows = []
    for d in (1, 10, 100):
        k = path_consistency(**inp, gamma=gamma, entropy_coef=tau, kl_coef=lam, rollout=d)
        cpu_inp = {key: v.cpu() for key, v in inp.items()}
        t0 = time.perf_counter()
        naive = naive_windows(cpu_inp, gamma, tau, lam, d)
        t_naive = time.perf_counter() - t0
        for name, fn in (("naive", None), ("loop t×d", loop_td), ("loop d", loop_d)):
            ref = naive if fn is None else fn(inp, gamma, tau, lam, d).cpu()
            err = float((ref.double() - k.cpu().double()).abs().max() / ref.abs().max())
            assert err < 1e-4, (name, d, err)
        t_kernel = timeit(
            lambda d=d: path_consistency(
                **inp, gamma=gamma, entropy_coef=tau, kl_coef=lam, rollout=d
            ),
            device,
            repeats,
        )
        t_td = timeit(
            lambda d=d: loop_td(inp, gamma, tau, lam, d), device, max(1, repeats // 10), 1
        )
        t_d = timeit(lambda d=d: loop_d(inp, gamma, tau, lam, d), device, repeats)
        rows.append((d, t_kernel, t_naive, t_td, t_d))
    print(f"\nPath-consistency kernel, B={B}, T={T}, float32, device={device}")
    print(
        "| d   | kernel (ms) | naive per-window loop (ms) | ratio   "
        "| loop t×d (ms) | ratio | loop d (ms) | ratio |"
    )
    print(
        "|-----|-------------|----------------------------|---------"
        "|---------------|-------|-------------|-------|"
    )
    for d, tk, tn, ttd, td_ in rows:
        print(
            f"| {d:<3} | {tk * 1e3:11.3f} | {tn * 1e3:26.0f} | {tn / tk:6.0f}x"
            f" | {ttd * 1e3:13.1f} | {ttd / tk:4.0f}x | {td_ * 1e3:11.2f} | {td_ / tk:4.1f}x |"
        )


def bench_kernel_versions(device, repeats):
    """The kernel against the previous implementation (baseline), same inputs, float32."""
    cases = [(256, 64, 10), (32, 1000, "full")]
    print(f"\nKernel before/after, float32, device={device}, CPU: {cpu_model()}")
    print("| shape       | d    | γ    | previous (ms) | new (ms) | new/previous |")
    print("|-------------|------|------|---------------|----------|--------------|")
    for B, T, d in cases:
        inp = kernel_inputs(B, T, device)
        for gamma in (0.99, 1.0):
            kw = dict(gamma=gamma, entropy_coef=0.01, kl_coef=0.1, rollout=d)
            t_old = timeit(
                lambda kw=kw, inp=inp: previous_path_consistency(**inp, **kw), device, repeats
            )
            t_new = timeit(lambda kw=kw, inp=inp: path_consistency(**inp, **kw), device, repeats)
            print(
                f"| [{B}, {T}]{'':<{11 - len(f'[{B}, {T}]')}} | {d!s:<4} | {gamma:<4} "
                f"| {t_old * 1e3:13.3f} | {t_new * 1e3:8.3f} | {t_new / t_old:11.2f}x |"
            )


def realistic_batch(B, T, obs_dim, act_dim, device):
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(B, T + 1, obs_dim, generator=g)
    terminated = torch.zeros(B, T, 1, dtype=torch.bool)
    terminated[:, -1] = True
    is_init = torch.zeros(B, T, 1, dtype=torch.bool)
    is_init[:, 0] = True
    td = TensorDict(
        {
            "observation": obs[:, :-1],
            "action": torch.rand(B, T, act_dim, generator=g) * 1.8 - 0.9,
            "action_log_prob": -torch.rand(B, T, generator=g),
            "is_init": is_init,
            "next": {
                "observation": obs[:, 1:],
                "reward": torch.randn(B, T, 1, generator=g),
                "terminated": terminated,
                "truncated": torch.zeros_like(terminated),
                "done": terminated.clone(),
            },
        },
        batch_size=[B, T],
    )
    return td.to(device)


def make_actor(obs_dim, act_dim, seed, device):
    torch.manual_seed(seed)
    net = nn.Sequential(
        MLP(
            in_features=obs_dim,
            out_features=2 * act_dim,
            num_cells=[256, 256],
            activation_class=nn.Tanh,
        ),
        NormalParamExtractor(),
    ).to(device)
    module = TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"])
    return ProbabilisticActor(
        module, in_keys=["loc", "scale"], distribution_class=TanhNormal, return_log_prob=True
    )


def make_value(obs_dim, device):
    net = MLP(
        in_features=obs_dim, out_features=1, num_cells=[256, 256], activation_class=nn.Tanh
    ).to(device)
    return TensorDictModule(net, in_keys=["observation"], out_keys=["state_value"])


def bench_losses(device, repeats):
    B, T, obs_dim, act_dim = 64, 100, 17, 6
    td = realistic_batch(B, T, obs_dim, act_dim, device)
    actor, prior = make_actor(obs_dim, act_dim, 0, device), make_actor(obs_dim, act_dim, 1, device)
    value = make_value(obs_dim, device)

    def networks_only():
        lp = actor.get_dist(td.copy()).log_prob(td["action"])
        with torch.no_grad():
            prior.get_dist(td.copy()).log_prob(td["action"])
        both = torch.cat([td.select("observation"), td["next"].select("observation")], 0)
        v = value(both)["state_value"]
        (lp.sum() + v.sum()).backward()

    losses = {
        "TrustPCL d=1 (fixed ref)": TrustPCLLoss(
            actor, value, reference_network=prior, kl_coef=0.1, gamma=0.995, rollout=1
        ),
        "TrustPCL d=10 (lagged ref)": TrustPCLLoss(
            actor, value, kl_coef=0.1, gamma=0.995, rollout=10, advantage_clip=1.0
        ),
        "TrustPCL full": TrustPCLLoss(
            actor, value, reference_network=prior, kl_coef=0.1, rollout="full"
        ),
        "PCL d=10": PCLLoss(actor, value, entropy_coef=0.01, gamma=0.995, rollout=10),
        "RTB": RTBLoss(actor, prior, beta=1.0),
        "KL-REINFORCE off-policy": KLReinforceLoss(actor, prior, beta=1.0, mode="off_policy"),
    }
    for loss in losses.values():
        loss.to(device)

    def step(loss):
        out = loss(td)
        sum(v for k, v in out.items() if k.startswith("loss_")).backward()

    candidates = {"networks only (reference)": networks_only}
    candidates.update({name: (lambda loss=loss: step(loss)) for name, loss in losses.items()})
    best = {name: float("inf") for name in candidates}
    for fn in candidates.values():  # warm-up
        fn()
    # interleaved rounds: every candidate sees the same machine load, the minimum is kept
    for _ in range(repeats):
        for name, fn in candidates.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            best[name] = min(best[name], time.perf_counter() - t0)
    t_net = best["networks only (reference)"]
    print(
        f"\nLoss forward+backward, batch {B}×{T}, obs {obs_dim}, action {act_dim}, "
        f"2×256 tanh MLPs, float32, device={device} (interleaved rounds, best of {repeats})"
    )
    print("| loss                        | fwd+bwd (ms) | vs networks only |")
    print("|-----------------------------|--------------|------------------|")
    for name, t in best.items():
        print(f"| {name:<27} | {t * 1e3:12.2f} | {t / t_net:15.2f}x |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--kernel-only", action="store_true", help="only the kernel tables")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, CPU: {cpu_model()}")
    bench_kernel_versions(device, args.repeats)
    bench_kernel(device, args.repeats)
    if not args.kernel_only:
        bench_losses(device, max(3, args.repeats // 4))


if __name__ == "__main__":
    main()
