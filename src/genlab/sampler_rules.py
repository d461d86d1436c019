"""The samplers of diffusion models as torch-free data, and the one function that turns the
sampler options of any path into a plan.

`SAMPLER_RULES` names each sampler of `genlab.diffusion.samplers.SAMPLERS` with its rules:
whether it takes eta, whether it visits all T steps (and so takes no step count), whether it is
deterministic, what it is in one line. Each sampler class reads its own entry (`rules`), and a
test keeps the two sets of names equal; option checks, `model.sampler`'s value rule and the help
texts read the table, so they need no torch.

`plan_sampling` checks sampler / steps / eta / guidance_scale against a model and resolves them
into a `SamplerPlan`: for sample.py, `genlab.load(...).sample` and the model's own draws (the
test stage's and `evaluate=`'s FID samples, previews) alike, so every path refuses the same
things with the same words.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from genlab import GenlabError
from genlab.spec_rules import GUIDANCE, Rule, is_int, is_number


@dataclass(frozen=True)
class SamplerRules:
    name: str  # sampler=<name>, model.sampler=<name>
    title: str  # what it is, in the line sample.py prints
    about: str  # one line of help (conf/sample.yaml, --help)
    takes_eta: bool  # DDIM's noise knob eta applies to it
    all_steps: bool  # visits all T steps: takes no step count
    deterministic: bool  # the same x_T gives the same image (at eta = 0 where it takes eta)


SAMPLER_RULES: dict[str, SamplerRules] = {
    rules.name: rules
    for rules in (
        SamplerRules(
            "ddpm",
            "ancestral sampling",
            "ancestral (Ho et al. Algorithm 2): all T steps, fresh noise at each",
            takes_eta=False,
            all_steps=True,
            deterministic=False,
        ),
        SamplerRules(
            "ddim",
            "DDIM",
            "DDIM (Song et al. 2021): `steps` steps, deterministic at eta=0, noisier up to eta=1",
            takes_eta=True,
            all_steps=False,
            deterministic=True,
        ),
        SamplerRules(
            "dpmpp_2m",
            "DPM-Solver++(2M)",
            "DPM-Solver++(2M) (Lu et al. 2022): `steps` steps, deterministic, good in 10-20",
            takes_eta=False,
            all_steps=False,
            deterministic=True,
        ),
        SamplerRules(
            "dpmpp_2m_sde",
            "SDE-DPM-Solver++(2M)",
            "SDE-DPM-Solver++(2M) (Lu et al. 2022): `steps` steps, fresh noise at each",
            takes_eta=False,
            all_steps=False,
            deterministic=False,
        ),
    )
}
NAMES = ", ".join(SAMPLER_RULES)
DEFAULT_RULE = "ancestral when the step count is T, else DDIM"


def default_sampler(steps: int, timesteps: int) -> str:
    """The model's rule when no sampler is named: ancestral over all T steps, DDIM for fewer."""
    return "ddpm" if steps == timesteps else "ddim"


def _names(which) -> str:
    return " or ".join(name for name, rules in SAMPLER_RULES.items() if which(rules))


def invalid(key: str, value: Any, accepted: str) -> GenlabError:
    """The refusal of an option's value (sample.py and the Python API)."""
    shown = f"'{value}'" if isinstance(value, str) else repr(value)
    return GenlabError(f"Invalid option: {key}={shown}. {key} must be {accepted}.")


# The values each sampler option accepts whatever the model; plan_sampling adds the model's
# limits. sample.py checks these before torch is imported.
OPTION_RULES: dict[str, Rule] = {
    "sampler": Rule(
        lambda v: v is None or v in SAMPLER_RULES,
        f"one of {NAMES} (or null: the model's own choice)",
    ),
    "steps": Rule(lambda v: v is None or (is_int(v) and v >= 1), "an integer >= 1 (or null)"),
    "eta": Rule(
        lambda v: v is None or (is_number(v) and 0 <= v <= 1),
        "a number in [0, 1] (0: deterministic DDIM, 1: DDPM's noise; or null)",
    ),
    "guidance_scale": Rule(lambda v: v is None or GUIDANCE.ok(v), f"{GUIDANCE.accepted} (or null)"),
}
# model.sampler (genlab.specs.DDPMSpec): the sampler of the model's own draws.
MODEL_SAMPLER = Rule(
    lambda v: v is None or v in SAMPLER_RULES,
    f"one of {NAMES}, or null ({DEFAULT_RULE})",
    "e.g. model.sampler=dpmpp_2m.",
)


def check_values(values: Mapping[str, Any]) -> None:
    """Refuse the first sampler option of `values` that no model accepts."""
    for key, rule in OPTION_RULES.items():
        if key in values and not rule.ok(values[key]):
            raise invalid(key, values[key], rule.accepted)


@dataclass(frozen=True)
class ModelSampling:
    """What a diffusion model brings to a plan: its T, its own settings (the spec's
    sample_steps, sampler, eta, guidance_scale) and whether it is class-conditional."""

    kind: str
    timesteps: int
    sample_steps: int
    sampler: str | None
    eta: float
    guidance_scale: float
    conditional: bool


@dataclass(frozen=True)
class SamplerPlan:
    sampler: str  # a name of SAMPLER_RULES
    steps: int  # T for a sampler that visits all steps
    eta: float | None  # None: the sampler has no eta
    guidance_scale: float

    def options(self) -> dict[str, Any]:
        """The plan as options: plan_sampling gives this same plan back for them."""
        return {
            "sampler": self.sampler,
            "steps": self.steps,
            "eta": self.eta,
            "guidance_scale": self.guidance_scale,
        }

    def describe(self) -> str:
        what = f"{SAMPLER_RULES[self.sampler].title}, {self.steps} steps"
        what += f", eta={self.eta:g}" if self.eta is not None else ""
        return what + (f", guidance {self.guidance_scale:g}" if self.guidance_scale else "")


def plan_sampling(
    model: ModelSampling,
    sampler: str | None = None,
    steps: int | None = None,
    eta: float | None = None,
    guidance_scale: float | None = None,
    *,
    deterministic_for: str | None = None,
) -> SamplerPlan:
    """The plan of the options a caller gave (None: not given, the model's own setting), or a
    GenlabError naming the option and the fix. `deterministic_for`: the task that needs the
    same x_T to give the same image (interpolate): a deterministic sampler at eta = 0, DDIM
    unless the caller or the model names another."""
    check_values({"sampler": sampler, "steps": steps, "eta": eta, "guidance_scale": guidance_scale})
    T, kind = model.timesteps, model.kind.upper()
    if steps is not None and steps > T:
        raise invalid("steps", steps, f"an integer between 1 and this {kind}'s T={T}")
    if guidance_scale and not model.conditional:
        raise GenlabError(
            f"guidance_scale={guidance_scale} needs a class-conditional {kind} (classifier-free "
            "guidance mixes its predictions with and without the label), but this one is "
            "unconditional: drop guidance_scale=, or train with model.conditional=true."
        )
    if deterministic_for:
        name = _deterministic(model, sampler, eta, deterministic_for)
    else:
        name = sampler or model.sampler or default_sampler(steps or model.sample_steps, T)
    rules = SAMPLER_RULES[name]
    if sampler:
        chosen = f"sampler={name}"
    elif model.sampler == name:
        chosen = f"model.sampler={name} (this {kind}'s own sampler)"
    else:
        chosen = f"sampler=null with steps = T = {T}"  # the rule picks ddpm only then
    if rules.all_steps and steps not in (None, T):
        raise GenlabError(
            f"{chosen} is {rules.title}: it takes all T={T} steps, so steps={steps} does not "
            f"apply. Use sampler={_names(lambda r: not r.all_steps)} steps={steps} for fewer "
            "steps, or drop steps=."
        )
    if eta is not None and not rules.takes_eta:
        raise GenlabError(
            f"eta={eta} sets the noise of DDIM steps, but this is {rules.title} ({chosen}), which "
            f"has no eta: use sampler={_names(lambda r: r.takes_eta)}, or drop eta=."
        )
    if not rules.takes_eta:
        eta = None
    elif deterministic_for:
        eta = 0.0
    else:
        eta = float(model.eta if eta is None else eta)
    return SamplerPlan(
        name,
        T if rules.all_steps else steps or model.sample_steps,
        eta,
        float(model.guidance_scale if guidance_scale is None else guidance_scale),
    )


def _deterministic(model: ModelSampling, sampler: str | None, eta, task: str) -> str:
    """The sampler of a task that needs a deterministic map from x_T to an image."""
    noisy = f"sampler={sampler}" if sampler and not SAMPLER_RULES[sampler].deterministic else None
    if noisy or eta:
        raise GenlabError(
            f"task={task} needs a deterministic map from x_T to an image: with "
            f"{noisy or f'eta={eta}'} fresh noise enters at every step, so nearby x_T would not "
            f"give nearby images. Drop that option (deterministic: "
            f"sampler={_names(lambda r: r.deterministic)}, at eta=0)."
        )
    if sampler:
        return sampler
    if model.sampler and SAMPLER_RULES[model.sampler].deterministic:
        return model.sampler
    return "ddim"


def check_model_sampler(sampler: str | None, eta: float) -> None:
    """The cross-key rule of a model's own settings (genlab.run_rules): model.eta > 0 with a
    model.sampler that has no eta."""
    rules = SAMPLER_RULES.get(sampler) if sampler else None
    if rules is not None and eta and not rules.takes_eta:
        raise GenlabError(
            f"Invalid config: model.eta={eta} sets the noise of DDIM steps, but this is "
            f"{rules.title} (model.sampler={sampler}), which has no eta: use model.sampler="
            f"{_names(lambda r: r.takes_eta)}, or set model.eta=0."
        )
