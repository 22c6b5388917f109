"""The jobs' console and log file (pipeline/common/logs.py) and init_ray's use of it."""

from __future__ import annotations

import logging

import pytest

from pipeline.common import logs


@pytest.fixture
def clean_logging():
    """Each test starts without handlers on the library loggers and leaves none behind."""
    library = logging.getLogger("pipeline")
    engines = [logging.getLogger(name) for name in ("ray", "ray.data")]
    saved = {logger: logger.handlers[:] for logger in (library, *engines)}
    level, propagate = library.level, library.propagate
    library.handlers[:] = []
    yield library
    for logger, handlers in saved.items():
        for handler in logger.handlers:
            if handler not in handlers:
                handler.close()
        logger.handlers[:] = handlers
    library.setLevel(level)
    library.propagate = propagate


def test_console_shows_the_plain_line_once(clean_logging, capsys):
    logs.configure_logging()
    logs.configure_logging()  # a second call replaces, never duplicates
    logging.getLogger("pipeline.train.trainer").info("epoch 1/2 end2end")
    logging.getLogger("pipeline.train.trainer").debug("hidden")
    assert capsys.readouterr().out == "epoch 1/2 end2end\n"


def test_log_file_gets_everything_including_ray(clean_logging, tmp_path, capsys):
    import ray.data  # noqa: F401  (Ray Data's logger does not propagate to "ray")

    assert logging.getLogger("ray.data").propagate is False
    log_file = tmp_path / "logs" / "job.log"
    logs.configure_logging(logging.WARNING, log_file=log_file)
    logging.getLogger("pipeline.extract.job").info("[extract] visual: 3 to do")
    logging.getLogger("pipeline.extract.job").warning("careful")
    logging.getLogger("ray.data").warning("engine chatter")
    assert capsys.readouterr().out == "careful\n"
    text = log_file.read_text()
    assert "INFO pipeline.extract.job: [extract] visual: 3 to do" in text
    assert "WARNING ray.data: engine chatter" in text


def test_ensure_logging_leaves_an_existing_set_up_alone(clean_logging, capsys):
    clean_logging.propagate = False  # no root handler (pytest's) in reach
    assert logs.ensure_logging() is True
    assert logs.ensure_logging() is False
    assert len(clean_logging.handlers) == 1
    clean_logging.handlers[:] = [logging.NullHandler()]
    assert logs.ensure_logging() is False and len(clean_logging.handlers) == 1


def test_logging_to_file_is_quiet_and_restores(clean_logging, tmp_path, capsys):
    logs.configure_logging()
    before = clean_logging.handlers[:]
    with logs.logging_to_file(tmp_path / "train.log"):
        logging.getLogger("pipeline.train.trainer").info("epoch 1/1")
    logging.getLogger("pipeline.synthetic.crosscam").info(" gru full seed 0: done")
    assert capsys.readouterr().out == " gru full seed 0: done\n"
    assert "epoch 1/1" in (tmp_path / "train.log").read_text()
    assert clean_logging.handlers == before


def test_ensure_logging_in_a_worker_counts_only_the_library_handlers(clean_logging, capsys):
    root = logging.getLogger()
    ray_console = logging.StreamHandler()  # what Ray Train puts on a worker's root logger
    root.addHandler(ray_console)
    try:
        assert logs.ensure_logging() is False  # a root handler receives the records
        assert logs.ensure_logging(worker=True) is True
        assert logs.ensure_logging(worker=True) is False
    finally:
        root.removeHandler(ray_console)
    logging.getLogger("pipeline.train.trainer").info("epoch 1/1")
    assert capsys.readouterr().out == "epoch 1/1\n"


def test_console_to_file_catches_every_write_to_the_descriptors(tmp_path, capfd):
    """Python prints, a C-level write to fd 2 and a child process's output all land in the
    file; only what goes through the yielded stream reaches the console."""
    import os
    import subprocess
    import sys

    log = tmp_path / "out" / "demo.log"
    with logs.console_to_file(log) as console:
        print("progress bar", flush=True)
        os.write(2, b"engine chatter\n")
        subprocess.run([sys.executable, "-c", "print('from a worker')"], check=True)
        print("stage 1/4", file=console)
    print("after")
    captured = capfd.readouterr()
    assert captured.out == "stage 1/4\nafter\n" and captured.err == ""
    assert log.read_text().splitlines() == ["progress bar", "engine chatter", "from a worker"]
