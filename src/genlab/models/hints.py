"""The ways to get a capability a model lacks, as `python train.py` choices: computed from the
specs of the known models (genlab.models.catalog), so a hint only names keys the named model's
spec accepts, and a new model that declares the key is offered without editing this module."""

from __future__ import annotations

import dataclasses

THIS_RUN = "<this run>"  # sample.py puts the run's folder in its place


def _specs() -> dict:
    from genlab.models.catalog import MODEL_SPECS

    return MODEL_SPECS


def keys(kind: str) -> set[str]:
    """The keys model=<kind>'s spec accepts (empty for a model genlab does not know)."""
    spec = _specs().get(kind)
    return {f.name for f in dataclasses.fields(spec)} if spec else set()


def _train(choices: list[str]) -> str:
    return " or ".join(f"`python train.py {c}`" for c in dict.fromkeys(choices))


def _with_key(kind: str, key: str, value: str) -> list[str]:
    """`model=<kind> model.<key>=<value>` where kind's spec has the key, else every model's
    whose spec has it."""
    if key in keys(kind):
        return [f"model={kind} model.{key}={value}"]
    return [f"model={name} model.{key}={value}" for name in _specs() if key in keys(name)]


def generative(kind: str) -> str:
    """How to sample where a `kind` cannot: a diffusion prior over this autoencoder's codes
    (the models whose spec has an `autoencoder` key), or a VAE."""
    spec = _specs().get(kind)
    ways = []
    if spec is not None and spec.is_autoencoder:
        ways = [
            f"model={n} model.autoencoder={THIS_RUN}" for n in _specs() if "autoencoder" in keys(n)
        ]
    return f"To sample, train {_train([*ways, 'model=vae'])}."


def conditional(kind: str) -> str:
    """How to get a class-conditional model: this model's own `conditional` key, or a model
    that always takes labels (its spec's uses_labels) or has that key."""
    ways = _with_key(kind, "conditional", "true")
    if "conditional" not in keys(kind):
        always = [f"model={n}" for n, s in _specs().items() if s.uses_labels({})]
        ways = [*always, *ways]
    return f"Train a class-conditional one: {_train(ways)}."


def latent_dim(kind: str, value: int) -> str:
    """How to get a latent of `value` dims: this model's own `latent_dim` key, or the models
    that have one."""
    return f"train with {_train(_with_key(kind, 'latent_dim', str(value)))}."


def encoder(kind: str) -> str:
    """Where a model without an encoder points: the latent DDPM's own autoencoder run, else the
    autoencoders."""
    if "autoencoder" in keys(kind):
        return "Its autoencoder (the run at this run's model.autoencoder) has one: ask that run."
    names = [f"model={n}" for n in _specs() if "latent_dim" in keys(n)]
    return f"Train a model with an encoder: {_train(names)}."
