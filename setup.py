"""gitsieve's packaging.  The source folders ``actors/`` and ``common/`` install as
``gitsieve.actors`` and ``gitsieve.common``: no generic top-level names in people's
environments.  Metadata and dependencies live in pyproject.toml."""
from setuptools import find_packages, setup

SOURCES = ("actors", "common")

setup(
    packages=[f"gitsieve.{package}" for source in SOURCES
              for package in [source, *(f"{source}.{sub}" for sub in find_packages(source))]],
    package_dir={f"gitsieve.{source}": source for source in SOURCES},
    # What `gitsieve bench` and `gitsieve test` run beside the packages (tools/resources.py).
    data_files=[("share/gitsieve/scripts", ["scripts/churn.py", "scripts/agent_sim.py",
                                            "scripts/gitsieve.service",
                                            "scripts/gitsieve-helper.service"]),
                ("share/gitsieve/tests/corpus", ["tests/corpus/cases.py"]),
                ("share/gitsieve", ["supervisor.conf"])],
)
