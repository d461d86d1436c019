"""`python -m genlab.train ...`: the command genlab-train (genlab.commands.train), also what a
sweep's own-process job and Lightning's DDP ranks run.

Only a command: the package attribute `genlab.train` is the function `genlab.train(overrides)`
(genlab.api.train), and an import of this module would bind the module over it, so it is
refused. The training flow is genlab.training.
"""

if __name__ == "__main__":
    from genlab.commands import train

    train()
elif __name__ != "__mp_main__":  # (a spawned worker re-runs __main__ under this name)
    raise ImportError(
        "genlab.train is the command `python -m genlab.train`: call the function "
        "genlab.train(overrides) (genlab.api.train), or genlab.training.run(cfg)."
    )
