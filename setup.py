from setuptools import setup

setup(
    name="gitsieve",
    version="0.1.0",
    description="Auto-commit a person's edits to a git workspace, never an autonomous "
                "process's churn: decides by path, by writer and by content.",
    packages=["actors", "common"],
    # What `gitsieve bench` and `gitsieve test` run beside the packages (common/resources.py).
    data_files=[("share/gitsieve/scripts", ["scripts/churn.py", "scripts/agent_sim.py"]),
                ("share/gitsieve/tests/corpus", ["tests/corpus/cases.py"])],
    python_requires=">=3.11",
    install_requires=["pyzmq>=25", "inotify_simple>=1.3", "psutil>=5.9", "msgpack>=1.0",
                      "sh>=2.0", "orjson>=3.9"],
    extras_require={"test": ["pytest>=8", "pytest-timeout>=2.2", "supervisor>=4.2"]},
    entry_points={"console_scripts": ["gitsieve=common.cli:main",
                                      "actorctl=common.ctl:main"]},
)
