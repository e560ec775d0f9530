"""callbackd's log file across a rotation: renamed, made again, reopened on SIGHUP."""

import logging

from callbackd.__main__ import ReopenedFileHandler


def logger_to(handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"test-log-file-{id(handler)}")
    logger.propagate = False
    logger.addHandler(handler)
    return logger


def test_lines_go_on_into_the_renamed_file_until_reopened(tmp_path):
    path = tmp_path / "callbackd.log"
    handler = ReopenedFileHandler(path)
    log = logger_to(handler)
    log.warning("one")
    path.rename(tmp_path / "callbackd.log.1")
    # logrotate's `create`: callbackd may not make the file itself.
    path.touch()
    log.warning("two")
    handler.reopen()
    log.warning("three")
    handler.close()
    assert (tmp_path / "callbackd.log.1").read_text().splitlines() == ["one", "two"]
    assert path.read_text().splitlines() == ["three"]


def test_a_file_it_cannot_reopen_leaves_the_lines_in_the_old_one(tmp_path, caplog):
    path = tmp_path / "logs" / "callbackd.log"
    path.parent.mkdir()
    handler = ReopenedFileHandler(path)
    log = logger_to(handler)
    path.rename(tmp_path / "callbackd.log.1")
    path.parent.rmdir()
    handler.reopen()
    log.warning("still written")
    handler.close()
    assert (tmp_path / "callbackd.log.1").read_text().splitlines() == ["still written"]
    assert "not reopened" in caplog.text
