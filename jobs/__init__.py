"""The command-line jobs, one module per verb; each has ``main(argv=None) -> int``.

Installed as console scripts (``crif-train`` -> ``jobs.train:main``, see pyproject.toml) and
runnable as files: ``python jobs/train.py`` (after ``make venv``'s editable install, or under
``ray job submit --working-dir .``, which puts the working directory on PYTHONPATH).
"""
