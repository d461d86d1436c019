"""What pyproject.toml cannot say: the repository's conf/ ships inside the built package as
genlab/conf, so that an installed genlab composes from it (genlab.composition.CONF_DIR) while
conf/ stays at the top of the checkout. A build step copies it, rather than a package_dir
mapping of a package genlab.conf onto conf/, because such a mapping turns an editable install
into setuptools' import-hook mode, whose namespace packages Hydra's plugin scan cannot list
(hydra_plugins.genlab_specs and genlab_sweep would not be found). An editable install keeps
the plain src/ path and reads the checkout's conf/."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithConf(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        for source in sorted(Path("conf").rglob("*.yaml")):
            target = Path(self.build_lib, "genlab", source)
            self.mkpath(str(target.parent))
            self.copy_file(str(source), str(target))


setup(cmdclass={"build_py": BuildPyWithConf})
