"""Turn a trained run into pictures: `python sample.py run=outputs/runs/<date>/<run> task=samples`.

The same Hydra app as the installed `genlab-sample` (genlab.commands.sample): options in
conf/sample.yaml, the work in genlab.sample.run, the exit codes in genlab.commands.
"""

# main (the Hydra main) and quote_paths are imported for the tests that load this script.
from genlab.commands import quote_paths, sample  # noqa: F401
from genlab.commands import sample_main as main  # noqa: F401

if __name__ == "__main__":
    sample()
