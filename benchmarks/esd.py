"""ESD training step: the editor's one-UNet implementation vs a naive two-copy one, same run.

Naive: a deep copy of the UNet serves the frozen predictions, the wrapper's own UNet is trained in place,
and the unconditional and conditional predictions (in the x_t sampler and in the target) are separate
forwards. Ours (``editors.esd``): one UNet, the trained slice swapped in with ``functional_call``, both
predictions in one batched forward. Both draw the same x_t and timesteps, and their losses are checked to
agree before anything is timed.

Each implementation runs in its own fresh process so peak memory is its own: the peak resident set size
(VmHWM, reset through /proc/self/clear_refs once the model is loaded) over setup and training, reported
as a total and as what the run adds on top of the loaded model. Processes alternate over ``--rounds``;
step time is the median over all timed steps.

    python benchmarks/esd.py [--arch tiny|sd15] [--size 8] [--steps 20] [--ddim-steps 4] [--method esd-x]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the repo's packages come first

from editors.esd import ESDRequest, _step_generator, _Trainer, parameter_names  # noqa: E402
from workbench import Workbench  # noqa: E402

PROMPT = "a red circle"


class NaiveTrainer:
    """ESD as a first implementation would write it: two UNets, one forward per prompt."""

    def __init__(self, wb: Workbench, req: ESDRequest, names: list[str]):
        self.req = req
        self.frozen = copy.deepcopy(wb.unet).requires_grad_(False)
        self.model = wb.unet
        params = [wb.unet.get_parameter(n.removeprefix("unet.")).requires_grad_(True) for n in names]
        self.optimizer = torch.optim.Adam(params, lr=req.lr)
        with torch.no_grad():
            self.uncond, self.cond = wb.encode(["", req.erase]).chunk(2)
        self.scheduler = copy.deepcopy(wb.scheduler)
        self.scheduler.set_timesteps(req.ddim_steps, device=wb.device)
        self.latent_shape, self.device = wb.latent_shape, wb.device

    @torch.no_grad()
    def sample_xt(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        sch, g = self.scheduler, _step_generator(self.req.seed, step)
        stop = int(torch.randint(len(sch.timesteps), (1,), generator=g))
        x = torch.randn((1, *self.latent_shape), generator=g).to(self.device) * sch.init_noise_sigma
        for t in sch.timesteps[:stop]:
            x_in = sch.scale_model_input(x, t)
            pu = self.frozen(x_in, t, encoder_hidden_states=self.uncond).sample
            pc = self.frozen(x_in, t, encoder_hidden_states=self.cond).sample
            x = sch.step(pu + self.req.sample_guidance * (pc - pu), t, x).prev_sample
        t = sch.timesteps[stop]
        return sch.scale_model_input(x, t), t

    def step(self, step: int) -> float:
        x, t = self.sample_xt(step)
        with torch.no_grad():
            e0 = self.frozen(x, t, encoder_hidden_states=self.uncond).sample
            ep = self.frozen(x, t, encoder_hidden_states=self.cond).sample
            target = e0 - self.req.negative_guidance * (ep - e0)
        loss = F.mse_loss(self.model(x, t, encoder_hidden_states=self.cond).sample, target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


def _status(field: str) -> int:
    """A memory figure from /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    wb = Workbench.random(args.arch, seed=0, sample_size=args.size, vae=False, device=args.device)
    cuda = wb.device.type == "cuda"
    req = ESDRequest(PROMPT, method=args.method, lr=1e-5, ddim_steps=args.ddim_steps)
    names = parameter_names(wb, args.method)
    wb.encode([PROMPT])  # tokenizer and text-encoder warm-up, outside the measured part
    # Reset the peak RSS to the current RSS: what follows is the implementation's own cost.
    Path("/proc/self/clear_refs").write_text("5")
    base = torch.cuda.memory_allocated() if cuda else _status("VmRSS")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer = (_Trainer if args.impl == "ours" else NaiveTrainer)(wb, req, names)
    losses, times = [], []
    for i in range(args.steps + 1):  # step 0 warms up
        start = time.perf_counter()
        losses.append(trainer.step(i))
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if cuda else _status("VmHWM")
    print(json.dumps({"times": times[1:], "losses": losses, "base": base, "peak": peak,
                      "trained": sum(wb.parameter(n).numel() for n in names),
                      "total": sum(p.numel() for p in wb.unet.parameters())}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="tiny", choices=["tiny", "sd15", "sd21"])
    ap.add_argument("--size", type=int, default=8, help="latent side")
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per process")
    ap.add_argument("--ddim-steps", type=int, default=4, help="DDIM steps of the x_t sampler")
    ap.add_argument("--method", default="esd-x")
    ap.add_argument("--rounds", type=int, default=2, help="processes per implementation, alternating")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cuda: memory is the CUDA allocator's, not the RSS")
    ap.add_argument("--impl", choices=["ours", "naive"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.impl:
        return child(args)

    runs: dict[str, list[dict]] = {"ours": [], "naive": []}
    for _ in range(args.rounds):
        for impl in runs:
            cmd = [sys.executable, __file__, *sys.argv[1:], "--impl", impl]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            runs[impl].append(json.loads(out.strip().splitlines()[-1]))
    ours, naive = runs["ours"][0], runs["naive"][0]
    if not torch.allclose(torch.tensor(ours["losses"]), torch.tensor(naive["losses"]), rtol=1e-3, atol=1e-9):
        raise SystemExit(f"the two implementations disagree: {ours['losses']} vs {naive['losses']}")

    step = {k: statistics.median(t for r in v for t in r["times"]) for k, v in runs.items()}
    peak = {k: max(r["peak"] for r in v) for k, v in runs.items()}
    added = {k: max(r["peak"] - r["base"] for r in v) for k, v in runs.items()}
    mb = 2 ** 20
    print(f"{args.arch} UNet ({ours['total'] / 1e6:.1f}M parameters, {args.method} trains "
          f"{ours['trained'] / 1e6:.2f}M), latent {args.size}x{args.size}, x_t from {args.ddim_steps} DDIM steps, "
          f"{args.threads} thread(s), {args.rounds} x {args.steps} timed steps each")
    print(f"  step time    ours {step['ours'] * 1e3:8.1f} ms   naive {step['naive'] * 1e3:8.1f} ms   "
          f"speed-up {step['naive'] / step['ours']:.2f}x  (target >= 1.5x)")
    what = "CUDA" if args.device.startswith("cuda") else "RSS "
    print(f"  peak {what}    ours {peak['ours'] / mb:8.1f} MB   naive {peak['naive'] / mb:8.1f} MB   "
          f"ratio {peak['ours'] / peak['naive']:.2f}  (target <= 0.6)")
    print(f"  added {what}   ours {added['ours'] / mb:8.1f} MB   naive {added['naive'] / mb:8.1f} MB   "
          f"ratio {added['ours'] / added['naive']:.2f}  (above the loaded model)")


if __name__ == "__main__":
    main()
