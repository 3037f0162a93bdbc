"""The ``labfast`` command line: -v anywhere, one-line errors for bad checkpoints."""
import subprocess
import sys

import pytest

from labfast import checkpoint, cli


@pytest.fixture(autouse=True)
def keep_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # cli.main rewrites sys.argv


@pytest.mark.parametrize("arguments", [["-v", "eval", "--help"], ["eval", "-v", "--help"], ["eval", "--help", "-v"]])
def test_verbose_flag_goes_before_or_after_the_subcommand_and_keeps_its_options(arguments, capsys):
    with pytest.raises(SystemExit) as exit_info:  # --help exits 0 after printing the command's options
        cli.main(arguments)
    assert exit_info.value.code == 0 and "--strict" in capsys.readouterr().out


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_flag_sets_debug_logging_before_or_after_the_subcommand(where, tmp_path):
    # A fresh interpreter: logging.basicConfig configures the root logger only once per process.
    verbose = ["-v", "eval"] if where == "before" else ["eval", "-v"]
    code = ("import logging, sys; from labfast import cli; sys.exit(cli.main(sys.argv[1:]) or "
            "(0 if logging.getLogger().level == logging.DEBUG else 3))")
    result = subprocess.run([sys.executable, "-c", code, *verbose, "--dataset", "300w", "--data-root", str(tmp_path),
                             "--checkpoint", str(tmp_path / "none.pt")], capture_output=True, text=True)
    # the checkpoint does not exist: with -v the error propagates (traceback, exit 1), so debug was on
    assert result.returncode == 1 and "Traceback" in result.stderr and "does not exist" in result.stderr


def test_a_text_file_as_checkpoint_is_one_line_saying_not_a_torch_checkpoint(tmp_path, capsys):
    text = tmp_path / "notes.pt"
    text.write_text("hello, this is text\n")
    assert cli.main(["eval", "--checkpoint", str(text), "--dataset", "300w", "--data-root", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert f"{text} is not a torch checkpoint" in error and "101" not in error


def test_a_truncated_checkpoint_is_one_line(tiny_checkpoint, tmp_path, capsys):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    assert cli.main(["predict", str(tmp_path), "--checkpoint", str(truncated)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error and "truncated or corrupt" in error


def test_checkpoint_load_names_a_foreign_file(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(checkpoint.CheckpointError, match="notes.txt is not a torch checkpoint"):
        checkpoint.load(text)


@pytest.mark.parametrize("stopped_by, code", [(None, 0), ("SIGINT", 130), ("SIGTERM", 143),
                                              ("another process's signal", 1)])
def test_train_exits_as_the_shell_reports_a_signal_when_a_signal_stopped_the_run(monkeypatch, tmp_path, stopped_by, code):
    from labfast.commands import train as command

    summary = {"run": str(tmp_path), "steps": 2, "best_val_nme": 0.1}
    if stopped_by:
        summary["stopped_by"] = stopped_by
    monkeypatch.setattr(command, "train", lambda config, out, resume: summary)
    assert cli.main(["train", "--data-root", str(tmp_path), "--out", str(tmp_path / "run")]) == code
