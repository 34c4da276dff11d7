"""The training loop shared by every task: D steps, G steps, EMA, logs, samples, checkpoints, resume.

One iteration (StarGAN v2's official order: all D steps, then all G steps):

    batch = next(stream)                       # task-shaped, CPU -> device
    branches = task.branches(batch, step)      # StarGAN v2: latent, reference
    branch.lam = feature_mix.draw_branches()   # ReMix/WM/mixup: with probability p, for the D and the G step
    for branch: d_step(branch)                 # critic on real vs (mixed / corrected / PCR-augmented) fakes
    for branch: g_step(branch)                 # adversarial + content (plain or relative) + the task's other losses
    ema.update()
"""
from __future__ import annotations

import copy
import json
import math
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.utils import save_image

from i2i.config import Config, ConfigError, save_config
from i2i.data.check import bad_files_error, find_bad_files, record_skipped
from i2i.engine import distributed, pretrained
from i2i.engine.amp import Precision
from i2i.engine.checkpoint import (capture_rng, checkpoint_path, latest_checkpoint, load_checkpoint,
                                   remove_partial_writes, restore_rng, save_checkpoint)
from i2i.engine.logging import RunLogger
from i2i.mixing import Regularizers
from i2i.tasks import task_class
from i2i.tasks.base import Branch, Negatives, Task
from i2i.weights import UntrustedCheckpointError


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the run stopped before the bad update and kept its last good checkpoint."""


def select_device(spec: str = "auto") -> torch.device:
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ValueError(f"train.device: {spec!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device is {spec!r} but CUDA is not available on this machine")
    return device


class EMA:
    """Exponential moving average of the generator-side nets (official: lerp of parameters, buffers copied)."""

    def __init__(self, nets: dict[str, nn.Module], beta: float):
        self.beta = beta
        self.nets = nets
        for net in nets.values():
            net.eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, source: dict[str, nn.Module]) -> None:
        for name, ema_net in self.nets.items():
            for p_ema, p in zip(ema_net.parameters(), source[name].parameters()):
                p_ema.lerp_(p, 1.0 - self.beta)
            for b_ema, b in zip(ema_net.buffers(), source[name].buffers()):
                b_ema.copy_(b)


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, device: torch.device | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.dist = distributed.from_environment()
        if self.dist.enabled and cfg.train.batch_per_rank is not None:
            cfg.train.batch_size = cfg.train.batch_per_rank * self.dist.world  # the global batch
        if cfg.train.batch_size % self.dist.world or cfg.train.batch_size < 2 * self.dist.world:
            raise ConfigError(f"train.batch_size: the global batch {cfg.train.batch_size} does not split over "
                              f"{self.dist.world} ranks into parts of >= 2 (ReMix, the mixers and R1 need pairs); "
                              f"use a multiple of {2 * self.dist.world} or train.batch_per_rank")
        if device is None and self.dist.enabled and torch.cuda.is_available() and cfg.train.device in ("auto", "cuda"):
            device = torch.device("cuda", self.dist.local_rank)
        self.device = device or select_device(cfg.train.device)
        if self.device.type == "cpu":
            # Denormal floats appear in these nets' gradients early in training and make x86 CPUs up to 100x slower
            # (measured: 26 s vs 0.2 s for the first iteration of a tiny StarGAN v2); flushing them changes values
            # below 1e-38 only.
            torch.set_flush_denormal(True)
        self.precision = Precision(self.device, cfg.train.amp, cfg.train.amp_dtype, announce=self.dist.is_main)
        self.task: Task = task_class(cfg.task)(cfg, self.device)
        self.task.shard = self.dist.shard
        self.stop_requested: str | None = None  # the signal that stopped the run, if any
        self.last_checkpoint: Path | None = None
        self.iteration = 0
        self.compile_trial = False  # --compile: the next iteration is the first with compiled nets

    # -- set-up --------------------------------------------------------------------------------------------------
    def check_data(self) -> None:
        """Rank 0 reads every training file once now, not hours into the run: a bad one stops the run naming it, or
        with data.skip_bad_images is dropped, logged and listed in the run's manifest under `skipped` (the other
        ranks then read that manifest)."""
        if not self.dist.is_main:
            return
        checks = self.task.data_checks()
        _, bad = find_bad_files(checks, progress=self.cfg.train.progress)
        if not bad:
            return
        if not self.cfg.data.skip_bad_images:
            raise bad_files_error(bad, len(checks))
        manifest = self.run_dir / "data_manifest.json"
        earlier = json.loads(manifest.read_text()).get("skipped", []) if manifest.is_file() else []
        self.task.drop_files(set(bad))
        self.task.write_manifest(self.run_dir)
        record_skipped(manifest, earlier, bad)
        for message in bad.values():
            print(f"warning: skipping a bad training file (--skip-bad-images): {message}", file=sys.stderr)
        print(f"warning: skipped {len(bad)} of {len(checks)} training files; '{manifest}' lists them under 'skipped'",
              file=sys.stderr)

    def setup(self, resume_from: Path | None) -> int:
        """Builds data, nets, EMA, optimisers and regularizers; loads `resume_from`. Returns the start iteration."""
        cfg, task = self.cfg, self.task
        torch.manual_seed(cfg.train.seed)  # the same on every rank: identical initial weights and random draws
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with self._main_rank_first():  # one rank generates a missing procedural set or pretrains an encoder
            # the other ranks read the manifest rank 0 wrote (and, with --skip-bad-images, pruned)
            task.prepare_data(self.run_dir, resume=resume_from is not None or not self.dist.is_main)
            self.check_data()
            if self.dist.is_main:
                save_config(cfg, self.run_dir / "config.yaml")
            nets = task.build()
            if self.dist.enabled:
                for name in task.sync_batchnorm_nets:
                    nets[name] = task.nets[name] = distributed.sync_batchnorm(nets[name], self.device)
            if cfg.train.channels_last:
                for net in nets.values():
                    to_channels_last(net)
            if cfg.train.ema_start == "official":  # the copy keeps PyTorch's default init, as clovaai/stargan-v2 does
                ema_nets = {n: copy.deepcopy(nets[n]) for n in task.ema_net_names}
                task.initialize(nets)
            else:
                task.initialize(nets)
                ema_nets = {n: copy.deepcopy(nets[n]) for n in task.ema_net_names}
        self.ema = EMA(ema_nets, cfg.train.ema_beta)
        if resume_from is None and cfg.train.init_from:
            self.init_from(nets)
        self.optimizers = task.optimizers()
        self.base_lrs = {name: [group["lr"] for group in opt.param_groups] for name, opt in self.optimizers.items()}
        self.regs = Regularizers.from_config(cfg, task)
        if self.dist.enabled:  # ReMix's a is averaged over the ranks, so every rank keeps the same a_bar
            self.regs.feature_mix.reduce = distributed.tensor_mean_over_ranks
        start = 0
        if resume_from is not None:
            if self.dist.is_main:
                remove_partial_writes(self.run_dir)
            start = self.load_state(load_checkpoint(resume_from))
            self.last_checkpoint = resume_from
        self.sample_inputs = task.sample_inputs()
        if self.dist.enabled:
            distributed.check_identical(self.task.nets)
        if cfg.train.compile:
            self.compile_nets()
        return start

    def compile_nets(self) -> None:
        """--compile: torch.compile the forward of every trained net but the task's `double_backward_nets`, in place
        (`Module.compile`: the parameters, the state_dict keys and the EMA copies stay as they are). Compiling happens
        in the first iteration, which `train_iteration` runs as a trial."""
        for name in self.compiled_nets():
            self.task.nets[name].compile()
        self.compile_trial = True

    def compiled_nets(self) -> list[str]:
        return [name for name in self.optimizers if name not in self.task.double_backward_nets]

    def init_from(self, nets: dict[str, nn.Module]) -> None:
        """Fine-tuning: the nets (and their EMA copies) start from `train.init_from`; the report is printed and kept."""
        train = self.cfg.train
        try:
            report = pretrained.init_from(self.task, nets, train.init_from, trust=train.trust_checkpoint)
        except (ValueError, UntrustedCheckpointError) as error:
            raise ConfigError(str(error)) from None
        for name, ema_net in self.ema.nets.items():
            ema_net.load_state_dict(nets[name].state_dict())
        if self.dist.is_main:
            report.save(self.run_dir)
            if train.progress:
                print(report.summary())

    @contextmanager
    def _main_rank_first(self):
        """Rank 0 runs the block first; the other ranks wait, then run it (finding its files made)."""
        if self.dist.enabled and not self.dist.is_main:
            distributed.barrier()
        yield
        if self.dist.enabled and self.dist.is_main:
            distributed.barrier()

    def state(self, iteration: int) -> dict:
        return {
            "task": self.cfg.task,
            "iteration": iteration,
            "config": self.cfg.to_dict(),
            "nets": {n: m.state_dict() for n, m in self.task.nets.items()},
            "nets_ema": {n: m.state_dict() for n, m in self.ema.nets.items()},
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "regularizers": self.regs.state_dict(),
            "rng": capture_rng(),
        } | ({"amp": self.precision.state_dict()} if self.precision.scaler is not None else {})

    def load_state(self, state: dict) -> int:
        if state["task"] != self.cfg.task:
            raise ValueError(f"the checkpoint is of task '{state['task']}', this run is '{self.cfg.task}'")
        for name, net in self.task.nets.items():
            net.load_state_dict(state["nets"][name])
        for name, net in self.ema.nets.items():
            net.load_state_dict(state["nets_ema"][name])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        self.regs.load_state_dict(state["regularizers"])
        self.precision.load_state_dict(state.get("amp", {}))  # checkpoints before float16 support have none
        restore_rng(state["rng"])
        return int(state["iteration"])

    # -- the two steps -------------------------------------------------------------------------------------------
    def translate(self, branch: Branch):
        """G2(G1(x)), or G2 of the interpolated G1 outputs when the branch mixes in this iteration; sets the
        critic condition of the fakes (a conditional G2 input such as SPADE's label map is the interpolated one)."""
        codes = self.task.encode(branch)
        e = codes.first if branch.lam is None else self.regs.feature_mix.interpolate(codes.first, codes.second, branch.lam)
        branch.cond_fake = self.task.fake_condition(e, branch)
        return codes, self.task.decode(e, branch)

    def optimize(self, loss: Tensor, logs: dict[str, Tensor], net_names: tuple[str, ...], step: int) -> None:
        """Backward and step of `net_names`. A non-finite logged value stops the run before the update; under float16
        loss scaling it skips the update and backs the scale off instead (an overflow), up to a limit in a row."""
        bad = first_non_finite(logs, self.dist.enabled)
        if bad is not None:
            if self.precision.skip_update(net_names):
                return
            raise diverged(bad, step, self.last_checkpoint, self.precision)
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        self.precision.backward(loss)
        if self.dist.enabled:  # the scaled gradients: the scale is the same on every rank, and an inf spreads to all
            distributed.average_gradients([p for n in net_names for p in self.task.nets[n].parameters()],
                                          self.dist.world)
        self.precision.step({name: self.optimizers[name] for name in net_names})

    def d_step(self, branch: Branch, step: int, keep_fakes: bool = False) -> dict[str, Tensor]:
        """keep_fakes: the fakes keep their graph and the branch's G step uses them instead of translating again
        (only valid when no G step runs in between)."""
        task, regs = self.task, self.regs
        with self.only_stepped_nets_record_grads(branch) if keep_fakes else torch.no_grad(), self.precision.autocast():
            codes, fake = self.translate(branch)
        if keep_fakes:
            branch.translation = (codes, fake)
            fake = fake.detach()
        real_a, real_b = task.real_pair(branch)
        fake, cond = regs.correct_fakes(regs.mix_fakes(real_a, fake), branch.cond_fake)
        negatives = Negatives(regs.negative_sets(fake, cond, real_a, real_b, task.real_condition(branch)))
        with self.precision.autocast():
            loss, logs = task.d_loss(branch, regs.critic(task, for_generator=False), negatives)
            loss, extra = regs.add_critic_losses(loss, task, real_a, fake, cond)
        values = _detached({**logs, **extra, "loss": loss}, f"D/{branch.name}_")
        self.optimize(loss, values, (task.critic_net,), step)
        return values

    def only_stepped_nets_record_grads(self, branch: Branch):
        """The G step's graph: the nets it does not step (D; StarGAN v2's reference branch also E and F) pass
        gradients on to their inputs but compute none for their weights, which the update would discard."""
        return frozen(*(net for name, net in self.task.nets.items() if name not in branch.g_nets))

    def g_step(self, branch: Branch, step: int) -> dict[str, Tensor]:
        task, regs = self.task, self.regs
        with self.precision.autocast(), self.only_stepped_nets_record_grads(branch):
            codes, fake = branch.translation or self.translate(branch)
            branch.translation = None
            loss, logs = task.g_loss(branch, regs.critic(task, for_generator=True), fake, codes)
            targets = task.targets(branch, codes)
            content, mix_logs = regs.feature_mix.content_loss(
                task.content(fake, branch), targets.first, targets.second if branch.lam is not None else None,
                branch.lam,
                lambda t: task.target_content(t, branch), task.content_distance, branch=branch.name,
            )
            loss = loss + task.content_weight * content
            loss, extra = regs.add_generator_losses(loss, task, task.real_pair(branch)[0], fake, branch.cond_fake)
        values = _detached({**logs, "content": content, **extra, "loss": loss}, f"G/{branch.name}_")
        values.update(_detached(mix_logs, f"mix/{branch.name}_"))
        self.optimize(loss, values, branch.g_nets, step)
        return values

    # -- the loop ------------------------------------------------------------------------------------------------
    def to_device(self, x: Tensor) -> Tensor:
        if x.dim() == 4 and self.cfg.train.channels_last:
            return x.to(self.device, memory_format=torch.channels_last, non_blocking=True)
        return x.to(self.device, non_blocking=True)

    def set_learning_rates(self, step: int) -> None:
        """The task's schedule (e.g. SPADE's constant-then-linear decay) as a factor on every base learning rate."""
        factor = self.task.lr_factor(step)
        for name, opt in self.optimizers.items():
            for group, base in zip(opt.param_groups, self.base_lrs[name]):
                group["lr"] = base * factor

    def train_iteration(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor | float]:
        """One iteration: all D steps, then all G steps (StarGAN v2's order; a task with step_order "g_first", such
        as SPADE, steps G then D per branch), then the EMA update. Returns the logged values as they are (0-d
        tensors on the device, left there until a logging iteration asks for them; `as_floats` converts).

        The first iteration with --compile is a trial: when it fails (no C compiler, an op the compiler does not
        support, a double backward through a compiled graph such as R1's), the nets, optimisers, regularizers and RNG
        go back to their state before it and the iteration runs again without torch.compile, after one warning line.
        An error that is not the compiler's then comes again from the eager iteration, as without --compile."""
        if not self.compile_trial:
            return self._iteration(batch, step)
        self.compile_trial = False
        before = copy.deepcopy(self.state(step))
        try:
            return self._iteration(batch, step)
        except TrainingDiverged:
            raise
        except Exception as error:  # compile errors share no type (dynamo, inductor, the C compiler, aot_autograd)
            lines = str(error).strip().splitlines()
            reason = f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]
        # outside the except block: the failed iteration's frames (and tensors) are released before the eager rerun.
        # Under torchrun every rank runs the same code on the same kind of device and falls back alike.
        self.load_state(before)
        for name in self.compiled_nets():
            self.task.nets[name]._compiled_call_impl = None  # undoes Module.compile (torch has no public inverse)
        if self.dist.is_main:
            print(f"warning: --compile: compiling failed in the first iteration ({reason}); training without "
                  f"torch.compile", file=sys.stderr)
        return self._iteration(batch, step)

    def _iteration(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor | float]:
        self.set_learning_rates(step)
        batch = {k: self.to_device(v) for k, v in batch.items()}
        branches = self.task.branches(batch, step)
        lams = self.regs.feature_mix.draw_branches([b.name for b in branches], next(iter(batch.values())).shape[0])
        for branch in branches:
            branch.lam = lams[branch.name]
        logs: dict[str, Tensor | float] = {}
        if self.task.step_order == "g_first":
            for branch in branches:
                logs.update(self.g_step(branch, step))
                logs.update(self.d_step(branch, step))
        else:
            # only D steps run between the first branch's D step and its G step, so G is unchanged and its D-step
            # fakes are its G-step fakes (the later branches' G steps follow an update of G)
            for k, branch in enumerate(branches):
                logs.update(self.d_step(branch, step, keep_fakes=k == 0 and self.cfg.train.reuse_fakes))
            for branch in branches:
                logs.update(self.g_step(branch, step))
        if self.dist.enabled and self.device.type == "cpu":  # no SyncBatchNorm on the CPU: share running statistics
            for name in self.task.sync_batchnorm_nets:
                distributed.average_buffers(self.task.nets[name], self.dist.world)
        self.ema.update(self.task.nets)
        if self.precision.scaler is not None:
            logs["amp/scale"] = self.precision.scale()
        if self.regs.feature_mix.method == "remix":
            for key, value in self.regs.feature_mix.a_bars.items():
                logs[f"mix/{key}_a_bar" if key else "mix/a_bar"] = value
        return logs

    def fit(self, resume_from: Path | None = None) -> Path:
        """Trains to cfg.train.total_iters; returns the last checkpoint. Ctrl-C/SIGTERM saves and stops cleanly."""
        train = self.cfg.train
        self.iteration = self.setup(resume_from)
        stream = iter(self.task.train_stream(self.iteration))
        main = self.dist.is_main
        logger = RunLogger(self.run_dir, start=self.iteration) if main else None
        progress = _progress(self.iteration, train.total_iters, train.progress and main,
                             f"{self.cfg.task} [{self.cfg.method}]")
        logged_at, tic = self.iteration, time.perf_counter()
        try:
            with self._signals():
                while self.iteration < train.total_iters and not self._stopping():
                    logs = self.train_iteration(next(stream), self.iteration)
                    self.iteration += 1
                    progress.update(1)
                    step, last = self.iteration, self.iteration == train.total_iters
                    if step % train.log_every == 0 or last:
                        self.check_gradient_overflows(step)
                    if main and (step % train.log_every == 0 or last):
                        seconds = (time.perf_counter() - tic) / (step - logged_at)
                        logs = as_floats(logs)
                        logger.log(step, logs, sec_per_iter=round(seconds, 4))
                        progress.set_postfix(_brief(logs), refresh=False)
                        logged_at, tic = step, time.perf_counter()
                    if main and (step % train.sample_every == 0 or last):
                        self.write_samples(step)
                    if step % train.save_every == 0 or last:
                        self.save(step)
            if self.stop_requested is not None and self.last_checkpoint_iteration() != self.iteration:
                self.save(self.iteration)
        finally:
            progress.close()
            if logger is not None:
                logger.close()
        return self.last_checkpoint

    def check_gradient_overflows(self, step: int) -> None:
        """float16 loss scaling: a net whose gradients overflowed in `max_skipped` updates in a row (each skipped by
        GradScaler, the scale halved each time) has stopped learning; the run stops (every rank holds the same
        scale, so all stop alike)."""
        stuck = self.precision.overflowing_nets()
        if stuck:
            nets = ", ".join(f"{name} {count}" for name, count in stuck.items())
            kept = f"the last good checkpoint is '{self.last_checkpoint}'" if self.last_checkpoint else \
                "no checkpoint was written yet"
            raise TrainingDiverged(f"float16 gradients overflowed in every update for {self.precision.max_skipped}+ "
                                   f"in a row (updates skipped: {nets}) by iteration {step}; stopped, {kept}")

    def _stopping(self) -> bool:
        """A signal reached this process (or, under torchrun, any rank: all ranks stop at the same iteration)."""
        if self.dist.enabled:
            return distributed.mean_over_ranks(self.stop_requested is not None) > 0
        return self.stop_requested is not None

    def save(self, step: int) -> None:
        """Rank 0 writes the checkpoint (after checking that every rank holds the same weights)."""
        if self.dist.enabled:
            distributed.check_identical(self.task.nets | {f"ema/{n}": m for n, m in self.ema.nets.items()})
        if self.dist.is_main:
            self.last_checkpoint = save_checkpoint(self.run_dir, self.state(step), self.cfg.train.keep_checkpoints)
        distributed.barrier()
        if not self.dist.is_main:
            self.last_checkpoint = checkpoint_path(self.run_dir, step)

    def last_checkpoint_iteration(self) -> int | None:
        latest = latest_checkpoint(self.run_dir)
        return int(latest.stem) if latest is not None else None

    @torch.no_grad()
    def write_samples(self, step: int) -> None:
        folder = self.run_dir / "samples"
        folder.mkdir(exist_ok=True)
        for name, grid in self.task.sample(self.ema.nets | _non_ema(self.task.nets, self.ema.nets), self.sample_inputs).items():
            save_image(grid, folder / f"{step:06d}_{name}.png")

    @contextmanager
    def _signals(self):
        """SIGINT/SIGTERM finish the current iteration, then the loop saves and stops (a second Ctrl-C aborts)."""
        def request_stop(signum, frame):
            self.stop_requested = signal.Signals(signum).name
            signal.signal(signal.SIGINT, previous[signal.SIGINT])

        previous = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, request_stop)
        except ValueError:  # not the main thread: leave signals alone
            previous = {}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


@contextmanager
def frozen(*nets: nn.Module):
    """The parameters of `nets` record no autograd graph inside the block (their requires_grad flags are restored)."""
    params = [p for net in nets for p in net.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


@torch.no_grad()
def to_channels_last(net: nn.Module) -> None:
    """NHWC layout for every 4-d parameter and buffer (`net.to(memory_format=...)` refuses nets with 5-d weights,
    such as StyleGAN2's modulated convs)."""
    for tensor in [*net.parameters(), *net.buffers()]:
        if tensor.dim() == 4:
            tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)


def first_non_finite(values: dict[str, Tensor | float], all_ranks: bool = False) -> tuple[str, float] | None:
    """The first non-finite value as (name, value) (components come before their total), or None; with `all_ranks`,
    every rank gets a value when any rank's values are not finite (all ranks then take the same decision).

    One host sync for all the values (an isfinite over their stack); they become Python floats only on failure."""
    tensors = [v for v in values.values() if isinstance(v, Tensor)]
    finite = all(math.isfinite(v) for v in values.values() if not isinstance(v, Tensor)) and (
        not tensors or bool(torch.stack([t.float().reshape(()) for t in tensors]).isfinite().all()))
    bad = None if finite else next((name, value) for name, value in as_floats(values).items()
                                   if not math.isfinite(value))
    if all_ranks and distributed.mean_over_ranks(bad is not None) > 0 and bad is None:
        bad = ("(on another rank)", float("nan"))
    return bad


def diverged(bad: tuple[str, float], step: int, last_checkpoint: Path | None,
             precision: Precision) -> TrainingDiverged:
    """The error for the non-finite value `bad` met at 0-based `step` (naming the skipped updates under loss
    scaling)."""
    kept = f"the last good checkpoint is '{last_checkpoint}'" if last_checkpoint else "no checkpoint was written yet"
    skipped = ", ".join(f"{name} {count}" for name, count in precision.skipped.items())
    scaled = f" (float16 loss scaling; updates skipped in a row for non-finite losses: {skipped})" if skipped else ""
    return TrainingDiverged(f"loss '{bad[0]}' is {bad[1]} at iteration {step + 1}{scaled}; stopped before updating, "
                            f"{kept}")


def _detached(logs: dict[str, Any], prefix: str) -> dict[str, Tensor | float]:
    return {prefix + k: v.detach() if isinstance(v, Tensor) else float(v) for k, v in logs.items()}


def as_floats(logs: dict[str, Tensor | float]) -> dict[str, float]:
    """Logged values as Python floats (one host sync per tensor: only on logging iterations)."""
    return {k: float(v) for k, v in logs.items()}


def _non_ema(nets: dict[str, nn.Module], ema: dict[str, nn.Module]) -> dict[str, nn.Module]:
    return {n: m for n, m in nets.items() if n not in ema}


def _brief(logs: dict[str, float]) -> dict[str, str]:
    """Progress-bar summary: D and G losses and the content loss, averaged over the branches."""
    def mean(prefix: str, suffix: str) -> float:
        values = [v for k, v in logs.items() if k.startswith(prefix) and k.endswith(suffix)]
        return sum(values) / max(len(values), 1)

    return {"D": f"{mean('D/', '_loss'):.3f}", "G": f"{mean('G/', '_loss'):.3f}",
            "content": f"{mean('G/', '_content'):.3f}"}


def _progress(start: int, total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc=desc, disable=not enabled, dynamic_ncols=True, unit="it")
