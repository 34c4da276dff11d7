"""Regularizers: feature mixing for G (ReMix, WM, mixup) and the discriminator-side regularizers (Mixup/CutMix/SRMix
fake replacement, Sample Correction, PCR, AdaptiveMix, DiffAugment).

`Regularizers` is what the trainer calls at the fixed points of an iteration; each regularizer knows only tensors
and the critic's `features`/`head`, so every one works with every task, alone or combined. Disabled regularizers
are identities.
"""
from __future__ import annotations

from typing import Any, Callable

from torch import Tensor

from i2i.mixing.remix import FeatureMix


class Regularizers:
    def __init__(
        self,
        feature_mix: FeatureMix,
        image_mixer=None,
        sample_correction=None,
        pcr=None,
        adaptivemix=None,
        diffaug=None,
    ):
        self.feature_mix = feature_mix
        self.image_mixer = image_mixer
        self.sample_correction = sample_correction
        self.pcr = pcr
        self.adaptivemix = adaptivemix
        self.diffaug = diffaug

    @classmethod
    def from_config(cls, cfg, task) -> "Regularizers":
        reg = cfg.regularizers
        feature_mix = FeatureMix.from_config(cfg.remix, seed=cfg.train.seed)
        image_mixer = sample_correction = pcr = adaptivemix = diffaug = None
        if reg.mixer != "none" and reg.mix_ratio > 0:
            from i2i.mixing.image_mix import ImageMixer

            image_mixer = ImageMixer(reg.mixer, reg.mix_ratio, reg.mix_alpha)
        if reg.sample_correction:
            from i2i.mixing.pcr import SampleCorrection

            sample_correction = SampleCorrection(reg.sc_threshold)
            sample_correction.set_bank(task.real_bank(reg.sc_bank_size))
        if reg.pcr:
            from i2i.mixing.pcr import PCR

            pcr = PCR(reg.pcr_op)
        if reg.adaptivemix:
            from i2i.mixing.adaptivemix import AdaptiveMix

            adaptivemix = AdaptiveMix(reg.adaptivemix_pairs, reg.adaptivemix_distance, reg.adaptivemix_alpha,
                                      reg.adaptivemix_noise, reg.adaptivemix_weight, reg.adaptivemix_on_generator,
                                      reg.adaptivemix_pairing)
        if reg.diffaug:
            from i2i.mixing.diffaug import DiffAugment

            diffaug = DiffAugment(reg.diffaug, shard=task.shard)
        return cls(feature_mix, image_mixer, sample_correction, pcr, adaptivemix, diffaug)

    # -- D step ----------------------------------------------------------------------------------------------------
    def mix_fakes(self, real: Tensor, fake: Tensor) -> Tensor:
        """Mixup/CutMix/SRMix: a fraction of the fakes replaced by real/fake mixes (scored as fakes)."""
        return self.image_mixer(real, fake) if self.image_mixer is not None else fake

    def correct_fakes(self, fake: Tensor, cond: Any) -> tuple[Tensor, Any]:
        """Sample Correction: fakes the realism measure calls 'already real' swapped out of the negative batch
        (a replacement brings its own condition along)."""
        if self.sample_correction is None:
            return fake, cond
        fake = self.sample_correction(fake)
        return fake, self.sample_correction.select_cond(cond)

    def negative_sets(self, fake: Tensor, cond: Any, real_a: Tensor, real_b: Tensor, cond_real: Any
                      ) -> list[tuple[Tensor, Any, float]]:
        """The critic's negatives (images, condition, weight): the fakes, plus PCR's combinations of real pairs,
        which share real_a's condition position by position (Eq. 13 weighs both sets by 1/2)."""
        if self.pcr is None:
            return [(fake, cond, 1.0)]
        return self.pcr.negatives(fake, cond, real_a, real_b, cond_real)

    def critic(self, task, for_generator: bool) -> Callable[[Tensor, Any], Any]:
        """The critic as the losses see it: DiffAugment in front, AdaptiveMix's mixed logits (official form) inside."""
        critic = task.critic
        am = self.adaptivemix
        if am is not None and am.pairs == "within" and (am.on_generator or not for_generator):
            critic = am.wrap(task.features, task.head, task.critic_groups)
        if self.diffaug is not None:
            return _augmented(critic, self.diffaug)
        return critic

    def add_critic_losses(self, loss: Tensor, task, real: Tensor, fake: Tensor, cond: Any) -> tuple[Tensor, dict]:
        return self._add_adaptivemix(loss, task, real, fake, cond, for_generator=False)

    # -- G step ----------------------------------------------------------------------------------------------------
    def add_generator_losses(self, loss: Tensor, task, real: Tensor, fake: Tensor, cond: Any) -> tuple[Tensor, dict]:
        return self._add_adaptivemix(loss, task, real, fake, cond, for_generator=True)

    def _add_adaptivemix(self, loss, task, real, fake, cond, for_generator: bool) -> tuple[Tensor, dict]:
        am = self.adaptivemix
        if am is None or (for_generator and not am.on_generator):
            return loss, {}
        if am.pairs == "within":
            extra = am.pop_loss()
        else:
            features = task.features if self.diffaug is None else _augmented(task.features, self.diffaug)
            extra = am.real_fake_loss(features, real, fake, cond)
        return loss + extra, {"adaptivemix": extra.detach()}

    # -- checkpoint ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"feature_mix": self.feature_mix.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.feature_mix.load_state_dict(state["feature_mix"])


def _augmented(fn: Callable[[Tensor, Any], Any], augment: Callable[[Tensor], Tensor]) -> Callable[[Tensor, Any], Any]:
    def augmented(images: Tensor, cond: Any) -> Any:
        return fn(augment(images), cond)

    return augmented
