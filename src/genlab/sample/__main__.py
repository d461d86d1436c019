"""`python -m genlab.sample ...` is genlab-sample (genlab.commands.sample)."""

from genlab.commands import sample

sample()
