"""Package layout (everything else is in pyproject.toml).

The shipped models live in the repository's top-level ``models/`` folder (weights and model cards, next
to the code that made them). They are installed as package data inside ``satseg/models/`` so that a wheel
carries them: setuptools maps the ``satseg.models`` package onto ``models/``. In a source checkout
(editable install or ``PYTHONPATH``) ``satseg.zoo`` finds ``models/`` beside the package instead.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["satseg", "satseg.*"]), "satseg.models"],
    package_dir={"satseg.models": "models"},
    package_data={
        "satseg": ["py.typed"],
        "satseg.models": ["*/checkpoint.pt", "*/card.md", "*/card.json", "frontier.json"],
    },
)
