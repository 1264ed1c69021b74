"""Speed of the path-consistency kernel and of the zarrl losses.

1. The prefix-sum kernel against loop baselines at B = 256, T = 100, d ∈ {1, 10, 100}: "naive" is
   the per-window Python loop of the reference test (rows × starts × steps, timed once), "loop t×d"
   loops over window starts and steps vectorized over the batch, "loop d" loops over the d offsets
   (shift-and-add, vectorized over batch and starts). All outputs are checked equal.
2. Forward + backward time of each loss on a realistic batch (64 slices × 100 steps, MuJoCo-sized
   networks: obs 17, action 6, two tanh layers of 256, as in the Trust-PCL recipe), next to the
   cost of the networks alone (score actions + values, then backward of their sum).

Usage: python benchmarks/losses.py [--device cuda] [--threads 1] [--repeats 20]
"""

from __future__ import annotations

import argparse
import time

import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.modules import MLP, NormalParamExtractor, ProbabilisticActor, TanhNormal
from zarrl.algorithms import (
    KLReinforceLoss,
    PCLLoss,
    RTBLoss,
    TrustPCLLoss,
    path_consistency,
    segment_marks,
)


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
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    bench_kernel(device, args.repeats)
    bench_losses(device, max(3, args.repeats // 4))


if __name__ == "__main__":
    main()
